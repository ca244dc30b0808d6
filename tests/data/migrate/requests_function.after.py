import json
import os

import requests

API_KEY = os.environ.get("API_KEY", "<YOUR API KEY>")
API_ENDPOINT = os.environ.get("API_ENDPOINT", "https://api.openai.com/v1/completions")


def generate_completion(prompt, model="gpt-3.5-turbo-instruct", temperature=1, max_tokens=None):
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {API_KEY}",
    }

    data = {
        "model": model,
        "prompt": prompt,
        "temperature": temperature,
    }

    if max_tokens is not None:
        data["max_tokens"] = max_tokens

    response = requests.post(API_ENDPOINT, headers=headers, data=json.dumps(data))

    if response.status_code == 200:
        return response.json()["choices"][0]["text"]
    else:
        raise Exception(f"Error {response.status_code}: {response.text}")


print(generate_completion("Where is the capital of Japan?", max_tokens=16))
