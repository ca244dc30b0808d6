from openai import OpenAI

# OpenAI APIの設定
client = OpenAI(api_key='YOUR_API_KEY')  # 自分のAPIキーに置き換えてください

# メッセージの送信とレスポンスの取得
def send_message(message):
    response = client.completions.create(
        model='gpt-3.5-turbo-instruct',  # 使用するGPTモデルを指定
        prompt=message,
        max_tokens=50,  # レスポンスとして受け取るトークンの最大数
        n=1,  # レスポンスの数
        temperature=0.7,  # テキスト生成のランダム性の度合い。0.0で確実な回答、1.0でランダムな回答
        stop=None,  # テキスト生成の終了条件を指定する文字列のリスト
        timeout=None  # リクエストのタイムアウト時間（秒）
    )
    return response.choices[0].text.strip()

# インタラクティブな対話の例
while True:
    try:
        user_input = input("You: ")
    except EOFError:
        break
    response = send_message(user_input)
    print("ChatGPT: " + response)
