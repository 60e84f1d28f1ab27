"""Saga step ``notify``: tell the customer (here: an outbox in durable state).
A ticket whose customer is unknown is a business error: the saga undoes the
filing."""


def handle(message, ctx):
    ticket, outputs = message["input"], message["outputs"]
    customer = outputs["intake"]["customer"]
    if customer is None:
        return {"error": {"code": "no_customer",
                          "message": f"no customer with email {ticket['email']!r}"}}
    filed = outputs["file"]
    note = (f"Dear {customer['name']}, ticket {ticket['id']} is number "
            f"{filed['position']} in our {filed['queue']} queue.")
    ctx.state["outbox"] = [*ctx.state.get("outbox", []), note][-100:]
    return {"sent": note}
