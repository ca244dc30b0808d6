import os

import openai

OPEN_AI_API_KEY = os.environ["OPEN_AI_API_KEY"]

# OpenAI APIの設定
openai.api_key = OPEN_AI_API_KEY  # 自分のAPIキーに置き換えてください

# メッセージの送信とレスポンスの取得
def send_message(message):
    response = openai.ChatCompletion.create(
        model='gpt-3.5-turbo',  # 使用するGPTモデルを指定
        messages = [
        {'role': 'system', 'content': 'You are a helpful assistant.'},
        {'role': 'user', 'content': message}])
    last_message = response["choices"][0]["message"]
    return last_message["content"]

# インタラクティブな対話の例
while True:
    try:
        user_input = input("You: ")
    except EOFError:
        break
    response = send_message(user_input)
    print("ChatGPT: " + response)
