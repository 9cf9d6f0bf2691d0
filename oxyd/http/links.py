"""OpenAPI `links`: where the ids in an answer lead (a created tenant to every route of it, a
queued message to its status, edit, reaction, cancel...). Clients and generators read them;
schemathesis' stateful phase follows them, so it reaches every tenant route with a tenant that
exists instead of a random id that answers 404.

Links name their target by operationId (the handler's name, openapi.describe); a link whose
source or target this app does not serve is left out.
"""

from __future__ import annotations

from typing import Any

TENANT = "$request.path.id"  # the tenant of the request that answered
NEW_TENANT = "$response.body#/id"
# Routes of a tenant that need more than the tenant are linked from what makes or lists that
# thing: a webhook from PUT .../webhook (before it, GET and DELETE are 404), a group's routes from
# the list of groups (after POST .../groups/{jid}/leave the group is 404 to this account, so they
# are not chained to the POST that made the group), joining from an invite link.
NEEDS_WEBHOOK = ("get_webhook", "delete_webhook", "dead_events", "replay_dead")
GROUP_OPS = ("get_group", "change_participants", "get_invite", "reset_invite", "leave_group")
NOT_AFTER_ADD = ("import_archive", "join_group", *NEEDS_WEBHOOK, *GROUP_OPS)
DAEMON_OPS = ("list_tenants", "health", "list_backups", "make_backup", "metrics", "readyz")
MESSAGE_OPS = ("get_message", "delete_message", "edit", "react", "retry_media")
CHAT_OPS = ("mark_read", "presence")
CONTACT_OPS = ("get_contact", "get_picture")
Link = dict[str, Any]


def _to(targets: tuple[str, ...], **params: str) -> dict[str, Link]:
    return {t: {"parameters": {f"path.{k}": v for k, v in params.items()}} for t in targets}


def _table(tenant_ops: tuple[str, ...]) -> dict[tuple[str, int], dict[str, Link]]:
    """(source operationId, status) -> {target operationId: its link's parameters, body}"""
    # A queued message is not stored yet: its media can be asked for once it is listed.
    sent = _to(MESSAGE_OPS[:-1], id=TENANT, msg_id="$response.body#/id")
    return {
        ("add_tenant", 201): {
            **_to(tuple(t for t in tenant_ops if t not in NOT_AFTER_ADD), id=NEW_TENANT),
            **{daemon_op: {} for daemon_op in DAEMON_OPS},
        },
        ("put_webhook", 200): _to(NEEDS_WEBHOOK, id=TENANT),
        ("send_message", 202): sent,
        ("send_message", 200): sent,
        ("list_messages", 200): {
            **_to(MESSAGE_OPS, id=TENANT, msg_id="$response.body#/messages/0/id"),
            **_to(("get_media",), id=TENANT, sha256="$response.body#/messages/0/media/sha256"),
        },
        ("get_message", 200): _to(("get_media",), id=TENANT, sha256="$response.body#/media/sha256"),
        ("list_chats", 200): _to(CHAT_OPS, id=TENANT, chat="$response.body#/chats/0/jid"),
        ("lookup", 200): _to(CONTACT_OPS, id=TENANT, jid="$response.body#/results/0/jid"),
        ("list_contacts", 200): _to(CONTACT_OPS, id=TENANT, jid="$response.body#/contacts/0/jid"),
        ("list_groups", 200): _to(GROUP_OPS, id=TENANT, jid="$response.body#/groups/0/jid"),
        ("get_invite", 200): {
            "join_group": {
                "parameters": {"path.id": TENANT},
                "requestBody": {"invite": "$response.body#/link"},
            }
        },
        ("create_token", 201): _to(("revoke_tokens",), id=TENANT),
    }


def add(paths: dict[str, dict[str, Any]]) -> None:
    """Put the links into the operations of `paths` (a document being built: responses that
    get links are copied first, as operations may share one response object)."""
    ops = {op["operationId"]: op for item in paths.values() for op in item.values()}
    tenant_ops = tuple(
        op["operationId"]
        for path, item in paths.items()
        if path.startswith("/v1/tenants/{id}")
        for op in item.values()
    )
    for (source, status), targets in _table(tenant_ops).items():
        op = ops.get(source)
        if op is None or str(status) not in op["responses"]:
            continue
        links = {
            target: {"operationId": target, **link}
            for target, link in targets.items()
            if target in ops and target != source
        }
        if links:
            response = op["responses"][str(status)]
            op["responses"][str(status)] = {**response, "links": links}
