"""The ticket queues, one per kind, in this agent's durable state.

As the saga step ``file`` it files the ticket (once per ticket id, so a
retried step files nothing twice); ``{"op": "remove", "id": ...}`` takes a
ticket out (the compensation, sent by unqueue); ``{"op": "list"}`` shows them."""


def handle(message, ctx):
    if message.get("op") == "list":
        return dict(ctx.state)
    if message.get("op") == "remove":
        removed = 0
        for kind, tickets in list(ctx.state.items()):
            kept = [t for t in tickets if t["id"] != message["id"]]
            removed += len(tickets) - len(kept)
            ctx.state[kind] = kept
        return {"removed": removed}
    ticket, intake = message["input"], message["outputs"]["intake"]
    queue = ctx.state.get(ticket["kind"], [])
    if not any(t["id"] == ticket["id"] for t in queue):
        queue.append({"id": ticket["id"], "summary": intake["summary"],
                      "customer": (intake["customer"] or {}).get("name")})
        ctx.state[ticket["kind"]] = queue
    position = [t["id"] for t in queue].index(ticket["id"]) + 1
    return {"queue": ticket["kind"], "position": position}
