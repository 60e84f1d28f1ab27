"""The customer directory (``config.directory``): answers ``{"email": ...}``
with the customer, or None; counts lookups in its durable state."""


def handle(message, ctx):
    ctx.state["lookups"] = ctx.state.get("lookups", 0) + 1
    email = str(message.get("email", "")).strip().lower()
    found = ctx.config.get("directory", {}).get(email)
    return None if found is None else {"email": email, **found}
