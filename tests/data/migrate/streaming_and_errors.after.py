"""An assistant written for openai 0.28: streaming, embeddings, errors and async calls."""
import asyncio
import openai as oa
from openai import OpenAI, AsyncOpenAI
client = OpenAI(base_url="http://localhost:8000/v1", organization="org-demo", api_key="sk-demo")  # the key
async_client = AsyncOpenAI(base_url="http://localhost:8000/v1", organization="org-demo", api_key="sk-demo")

MODELS = {"chat": "gpt-3.5-turbo", "complete": "gpt-3.5-turbo-instruct"}
EMBEDDING_MODEL = dict(model="text-embedding-ada-002")


def stream(messages):
    """Print a streamed answer; the messages are plain dicts and stay so."""
    last = messages[-1]["content"]
    print("asking:", last)
    chunks = client.chat.completions.create(model=MODELS["chat"], messages=messages, stream=True,
                                      timeout=30)
    for chunk in chunks:
        delta = chunk.choices[0].delta
        print((delta.content or ""), end="")


def embed(text):
    result = client.embeddings.create(input=[text], model="text-embedding-ada-002")
    return result.data[0].embedding


async def ask(prompt):
    answer = await async_client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt)
    return answer.choices[0].text


try:
    stream([{"role": "user", "content": "Hi"}])
except oa.RateLimitError:
    print("slow down")
except oa.BadRequestError as exc:
    print("bad request", exc)
asyncio.run(ask("Once upon a time"))
