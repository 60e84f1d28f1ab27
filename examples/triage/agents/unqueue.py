"""Compensation of the saga step ``file``: ask the queue to take the ticket out."""


async def handle(message, ctx):
    return await ctx.ask("queue", {"op": "remove", "id": message["input"]["id"]})
