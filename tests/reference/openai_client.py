"""The official OpenAI Python client against `tinyllama serve` (tests/serve.rs runs this).

argv: base_url prompt. Prints one JSON object with what the client got back."""
import json
import sys

import openai

base, prompt = sys.argv[1], sys.argv[2]
c = openai.OpenAI(base_url=base, api_key="k", max_retries=0)
out = {"models": [m.id for m in c.models.list()]}
model = out["models"][0]

r = c.completions.create(model=model, prompt=prompt, max_tokens=10, temperature=0)
out["completion"] = r.choices[0].text
out["completion_usage"] = [r.usage.prompt_tokens, r.usage.completion_tokens]
out["completion_stream"] = "".join(
    ch.choices[0].text for ch in c.completions.create(model=model, prompt=prompt, max_tokens=10, temperature=0, stream=True) if ch.choices
)

msgs = [{"role": "user", "content": "Hello there!"}]
r = c.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0)
out["chat"] = r.choices[0].message.content
out["chat_stream"] = "".join(
    ch.choices[0].delta.content or ""
    for ch in c.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0, stream=True)
    if ch.choices
)

errors = {}
try:
    c.completions.create(model=model, prompt=prompt, max_tokens=0)
except openai.BadRequestError as e:
    errors["max_tokens_0"] = e.status_code
try:
    c.completions.create(model="no-such-model", prompt=prompt, max_tokens=2)
except openai.NotFoundError as e:
    errors["unknown_model"] = e.status_code
try:
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
except openai.AuthenticationError as e:
    errors["wrong_key"] = e.status_code
out["errors"] = errors
print(json.dumps(out))
