"""Saga step ``intake``: summarise the ticket with the LLM, which may call the
``lookup_customer`` tool; the agent answers the tool by asking the customers
agent (ctx.ask) and gives the result back to the model."""

import json

TOOLS = [{"type": "function", "function": {
    "name": "lookup_customer",
    "description": "Find the customer who wrote the ticket, by email address.",
    "parameters": {"type": "object", "properties": {"email": {"type": "string"}},
                   "required": ["email"]}}}]
ROUNDS = 3  # tool rounds before the model must answer


async def handle(message, ctx):
    ticket = message["input"]
    ctx.state["tickets"] = ctx.state.get("tickets", 0) + 1
    chat = [{"role": "system", "content": "Summarise the support ticket in one sentence. "
                                          "Look the customer up first."},
            {"role": "user", "content": f"From {ticket['email']}: {ticket['text']}"}]
    customer, spent = None, 0
    for _ in range(ROUNDS):
        r = await ctx.llm.chat(chat, tools=TOOLS, max_tokens=200)
        spent += r.cost_micro_usd
        if not r.tool_calls:
            break
        chat.append(r.message)
        for call in r.tool_calls:
            args = json.loads(call["function"]["arguments"] or "{}")
            customer = await ctx.ask("customers", {"email": args.get("email", "")})
            chat.append({"role": "tool", "tool_call_id": call["id"],
                         "content": json.dumps(customer)})
    return {"summary": r.text, "customer": customer, "cost_micro_usd": spent}
