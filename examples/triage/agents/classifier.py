"""One voter of the pool ``vote``: the ticket's kind, seen through ``config.lens``."""

KINDS = ("bug", "billing", "other")


async def handle(message, ctx):
    r = await ctx.llm.chat(
        [{"role": "system", "content": f"You are {ctx.config['lens']}. Classify the "
                                       "support ticket. Reply with one word: bug, "
                                       "billing or other."},
         {"role": "user", "content": message["text"]}],
        max_tokens=5, temperature=0)
    word = r.text.strip().strip(".").lower()
    ctx.log("voted", word, "cost", r.cost_micro_usd)
    return word if word in KINDS else "other"
