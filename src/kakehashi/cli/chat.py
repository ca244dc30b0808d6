"""``kakehashi chat`` (a terminal REPL, or one answer for piped input) and ``kakehashi logs``.

The prompt comes up before the ``openai`` SDK is imported: the :class:`Chatbot` is built in a
thread (SDK import, model and context window looked up) while the user types the first line.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from kakehashi.client.chatbot import Chatbot
    from kakehashi.client.log import ChatLog, LoggedResponse

HELP = """\
Commands:
  /system [TEXT]      show or set the system message
  /model [NAME]       show or switch the model
  /temperature [T]    show or set the temperature (0-2; "default" unsets it)
  /logprobs N         after each answer, show each token's probability and N alternatives
                      (0 turns it off)
  /usage              tokens of the last request and of this session, and the context window
  /save PATH          save the conversation as JSON;  /load PATH  continue a saved one
  /reset              start a new conversation
  /help               this list
Enter sends; Esc then Enter (or Alt-Enter) starts a new line. quit, exit or Ctrl-D leave."""
MAX_TOP_LOGPROBS = 20


class Background:
    """A value built in a thread once :meth:`start` is called (the REPL calls it when its
    first prompt is on screen, so the two do not share the interpreter until then);
    :meth:`get` starts it if needed, waits for it and re-raises its error."""

    def __init__(self, build: Callable[[], Chatbot]) -> None:
        self._value: Chatbot | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(build,), daemon=True)

    def start(self) -> None:
        if self._thread.ident is None:
            self._thread.start()

    def _run(self, build: Callable[[], Chatbot]) -> None:
        try:
            self._value = build()
        except BaseException as exc:  # handed to the caller of get()
            self._error = exc

    def get(self) -> Chatbot:
        self.start()
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def _log(no_log: bool) -> ChatLog | None:
    from kakehashi.client.log import LOG_FILE, ChatLog
    from kakehashi.paths import data_dir

    return None if no_log else ChatLog(data_dir() / LOG_FILE)


def _fail(message: str) -> typer.Exit:
    """Print ``message`` as an error on stderr; the exit to raise."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(1)


class Session:
    """A conversation as the REPL and the one-shot mode run it: the bot, its log, options."""

    def __init__(self, bot: Background, log: ChatLog | None, conversation: str | None) -> None:
        self._console: Console | None = None
        self._trim_seen: object = None  # the last trim already shown
        self._bot = bot
        self.log = log
        self.conversation = conversation
        self.logprobs = 0

    @property
    def bot(self) -> Chatbot:
        return self._bot.get()

    @property
    def console(self) -> Console:
        """Where answers and messages go (rich, loaded once there is something to show)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False)
        return self._console

    def start_loading(self) -> None:
        """Start building the bot (the SDK import, the model look-up) in the background."""
        self._bot.start()

    def ask(self, prompt: str) -> None:
        """Send ``prompt``, show the streamed answer (and its logprobs), log the exchange."""
        from kakehashi.cli.chat_view import show_logprobs, stream_answer

        bot, prompt = self.bot, prompt.strip()
        pieces = bot.stream_chat(prompt, logprobs=self.logprobs or None)
        try:
            answer = stream_answer(self.console, pieces)
        finally:
            pieces.close()
        if bot.last_trim is not None and self._trim_seen is not bot.last_trim:
            self._trim_seen = bot.last_trim
            self.console.print(f"[yellow]note:[/] {bot.last_trim.describe()}")
        if self.logprobs:
            show_logprobs(self.console, bot.last_logprobs)
        self._record(prompt, answer)

    def _record(self, prompt: str, answer: str) -> None:
        if self.log is None:
            return
        bot = self.bot
        if self.conversation is None:
            self.conversation = self.log.new_conversation(bot.model, prompt)
        last = bot.usage.last
        self.log.record(
            self.conversation,
            model=bot.model,
            system=bot.system,
            prompt=prompt,
            response=answer,
            prompt_tokens=last.prompt_tokens if last else None,
            completion_tokens=last.completion_tokens if last else None,
        )

    # -- slash commands ----------------------------------------------------------------------

    def command(self, line: str) -> None:
        """Run one ``/command``."""
        from rich.markup import escape

        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        handler = getattr(self, f"_cmd_{name.lower()}", None)
        if handler is None:
            self.console.print(f"[red]error:[/] unknown command /{escape(name)}; /help lists them")
            return
        handler(argument)

    def _cmd_help(self, argument: str) -> None:
        self.console.print(HELP, highlight=False, markup=False)

    def _cmd_system(self, argument: str) -> None:
        if argument:
            self.bot.system = argument
        self.console.print(f"system: {self.bot.system or '(none)'}", markup=False)

    def _cmd_model(self, argument: str) -> None:
        if argument:
            self.bot.model = argument
        self.console.print(f"model: {self.bot.model}", markup=False)

    def _cmd_temperature(self, argument: str) -> None:
        if argument:
            if argument == "default":
                self.bot.temperature = None
            else:
                value = _number(argument)
                if value is None or not 0 <= value <= 2:
                    self.console.print("[red]error:[/] the temperature is a number from 0 to 2")
                    return
                self.bot.temperature = value
        shown = "server default" if self.bot.temperature is None else self.bot.temperature
        self.console.print(f"temperature: {shown}")

    def _cmd_logprobs(self, argument: str) -> None:
        if not argument.isdigit() or int(argument) > MAX_TOP_LOGPROBS:
            self.console.print(f"[red]error:[/] /logprobs takes 0 to {MAX_TOP_LOGPROBS}")
            return
        self.logprobs = int(argument)
        state = f"on, {self.logprobs} alternatives" if self.logprobs else "off"
        self.console.print(f"logprobs: {state}")

    def _cmd_usage(self, argument: str) -> None:
        from kakehashi.cli.chat_view import show_usage

        show_usage(self.console, self.bot)

    def _cmd_save(self, argument: str) -> None:
        from rich.markup import escape

        if not argument:
            self.console.print("[red]error:[/] /save needs a file name")
            return
        try:
            self.bot.save(Path(argument).expanduser())
        except OSError as exc:
            self.console.print(f"[red]error:[/] cannot write {escape(argument)}: {exc.strerror}")
            return
        self.console.print(f"saved to {argument}", markup=False)

    def _cmd_load(self, argument: str) -> None:
        if not argument:
            self.console.print("[red]error:[/] /load needs a file name")
            return
        self.bot.load(Path(argument).expanduser())
        self.conversation = None
        turns = sum(1 for m in self.bot.messages if m["role"] == "user")
        self.console.print(f"loaded {turns} turns from {argument}", markup=False)

    def _cmd_reset(self, argument: str) -> None:
        self.bot.reset()
        self.conversation = None
        self.console.print("new conversation")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _repl(session: Session, history_file: Path | None) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings
    from rich.markup import escape

    from kakehashi.client.errors import ClientError

    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    history = InMemoryHistory() if history_file is None else FileHistory(str(history_file))
    prompt: PromptSession[str] = PromptSession(history=history, key_bindings=bindings)
    print("\x1b[2mkakehashi chat · /help for commands · quit, exit or Ctrl-D to leave\x1b[0m")
    while True:
        try:
            line = prompt.prompt("> ", pre_run=session.start_loading)
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("quit", "exit"):
            break
        try:
            if text.startswith("/"):
                session.command(text)
            else:
                session.ask(text)
        except KeyboardInterrupt:
            session.console.print("[dim](interrupted)[/]")
        except ClientError as exc:
            session.console.print(f"[red]error:[/] {escape(str(exc))}")


def chat_command(
    prompt: Annotated[
        str | None, typer.Argument(help="Ask this and print the answer (default: a REPL).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model id; gemini-*, grok-*, plamo-*, gpt-* or a provider/ prefix pick the "
            "provider (default: the server's first model).",
        ),
    ] = None,
    provider: Annotated[
        str | None,
        typer.Option(
            help="openai, gemini, xai, plamo, lmstudio, llama-server, ollama or kakehashi."
        ),
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="An OpenAI-compatible base URL (overrides the provider's).")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key (default: the provider's variable or .env).")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System message.")] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0, max=2, help="Sampling temperature.")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Longest answer.")] = None,
    context_window: Annotated[
        int | None, typer.Option(min=16, help="Context window (default: from /v1/models).")
    ] = None,
    overflow: Annotated[
        str, typer.Option(help="When the history fills the window: drop or summarize.")
    ] = "drop",
    logprobs: Annotated[
        int, typer.Option(min=0, max=MAX_TOP_LOGPROBS, help="Show token probabilities.")
    ] = 0,
    resume: Annotated[
        bool, typer.Option("--continue", "-c", help="Continue the last logged conversation.")
    ] = False,
    conversation_id: Annotated[
        str | None, typer.Option("--cid", help="Continue this logged conversation.")
    ] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not log this chat.")] = False,
) -> None:
    """Chat with a model: a REPL on a terminal; `echo "question" | kakehashi chat` answers once.

    Every exchange is logged (see `kakehashi logs`) unless --no-log.
    """
    if overflow not in ("drop", "summarize"):
        raise typer.BadParameter("must be drop or summarize", param_hint="--overflow")
    log = _log(no_log)
    if no_log and (resume or conversation_id):
        raise typer.BadParameter("--continue and --cid read the log", param_hint="--no-log")
    history = _history(log, resume, conversation_id)
    if history:
        conversation_id = history[-1].conversation_id

    def build() -> Chatbot:
        from kakehashi.client.chatbot import Chatbot

        last = history[-1] if history else None
        bot = Chatbot(
            model or (last.model if last else None),
            system if system is not None else (last.system if last else None),
            provider=provider,
            base_url=base_url,
            api_key=api_key,
            temperature=temperature,
            max_tokens=max_tokens,
            context_window=context_window,
            overflow=overflow,  # type: ignore[arg-type]
            on_trim=lambda trim: None,  # the session shows trims itself
        )
        for exchange in history:
            bot.add_turn(exchange.prompt, exchange.response)
        bot.model  # noqa: B018 - look the model up now, while the user types
        return bot

    interactive = prompt is None and sys.stdin.isatty()
    session = Session(Background(build), log, conversation_id)
    session.logprobs = logprobs
    from kakehashi.client.errors import ClientError
    from kakehashi.client.log import LogError

    try:
        if interactive:
            history_file = None if log is None else log.path.with_name("chat_history")
            if history_file is not None:
                history_file.parent.mkdir(parents=True, exist_ok=True)
            _repl(session, history_file)
            return
        question = prompt if prompt is not None else sys.stdin.read()
        if not question.strip():
            raise typer.BadParameter("nothing to ask: the prompt is empty", param_hint="PROMPT")
        session.ask(question)
    except (ClientError, LogError) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _history(
    log: ChatLog | None, resume: bool, conversation_id: str | None
) -> list[LoggedResponse]:
    """The logged exchanges to continue (none unless --continue or --cid)."""
    from kakehashi.client.log import LogError

    if log is None or not (resume or conversation_id):
        return []
    try:
        conversation_id = conversation_id or log.last_conversation()
        if conversation_id is None:
            raise _fail("there is no logged conversation to continue")
        history = log.conversation(conversation_id)
    except LogError as exc:
        raise _fail(str(exc)) from None
    if not history:
        raise _fail(f"no logged conversation has the id {conversation_id!r}")
    return history


def logs_command(
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many exchanges.")] = 10,
    query: Annotated[
        str | None, typer.Option("--query", "-q", help="Only exchanges containing this text.")
    ] = None,
    conversation_id: Annotated[
        str | None, typer.Option("--cid", help="Every exchange of this conversation.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    path: Annotated[bool, typer.Option("--path", help="Print the log file's path.")] = False,
) -> None:
    """List and search the conversations `kakehashi chat` logged."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.markdown import Markdown
    from rich.markup import escape

    from kakehashi.client.log import LogError

    console = Console(highlight=False)
    log = _log(False)
    assert log is not None
    if path:
        typer.echo(str(log.path))
        return
    try:
        if conversation_id is not None:
            found = log.conversation(conversation_id)
            if not found:
                raise _fail(f"no logged conversation has the id {conversation_id!r}")
        else:
            found = log.search(query=query, limit=count)
    except LogError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        for exchange in found:
            typer.echo(json.dumps(asdict(exchange), ensure_ascii=False))
        return
    if not found:
        console.print("no logged exchanges" + (f" contain {query!r}" if query else ""))
        return
    for exchange in found:
        tokens = ""
        if exchange.prompt_tokens is not None:
            tokens = f" · {exchange.prompt_tokens}+{exchange.completion_tokens} tokens"
        console.rule(
            f"{exchange.created} · {exchange.model} · conversation {exchange.conversation_id}"
            + tokens,
            align="left",
        )
        console.print(f"[bold]>[/] {escape(exchange.prompt)}", highlight=False)
        console.print(Markdown(exchange.response))
