"""Rewrites Python code written for ``openai<1.0`` and for retired models into current code.

It works on libcst's concrete syntax tree, so everything it does not rewrite keeps its exact
formatting and comments:

* ``openai.ChatCompletion.create(...)`` → ``client.chat.completions.create(...)`` (and the
  other resources; ``acreate`` goes to an ``AsyncOpenAI`` client), ``engine=`` → ``model=``,
  ``request_timeout=`` → ``timeout=``;
* ``openai.api_key = K`` (with ``api_base`` and ``organization``) → ``client = OpenAI(...)``;
* ``response["choices"][0]["message"]["content"]`` → attribute access, on the values that come
  from those calls (and what is read or iterated from them), not on every dict;
* ``openai.error.X`` → the 1.x exception names;
* retired model names given as ``model``/``engine`` → their replacements, read from the
  retirement tables (:mod:`kakehashi.retirements`).
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst

from kakehashi.retirements import replacements

RESOURCES = {
    "ChatCompletion": ("chat", "completions", "create"),
    "Completion": ("completions", "create"),
    "Embedding": ("embeddings", "create"),
    "Moderation": ("moderations", "create"),
    "Image": ("images", "generate"),
    "Edit": ("chat", "completions", "create"),
    "Model": ("models",),
    "File": ("files",),
    "FineTuningJob": ("fine_tuning", "jobs"),
}
"""0.28 resources → the path of their 1.x client attribute (with the method to call when it
is not the one of the same name)."""
CONFIG = {"api_key": "api_key", "api_base": "base_url", "organization": "organization"}
ERRORS = {
    "InvalidRequestError": "BadRequestError",
    "Timeout": "APITimeoutError",
    "ServiceUnavailableError": "InternalServerError",
    "PermissionError": "PermissionDeniedError",
    "TryAgain": "APIError",
}
RENAMED_ARGS = {"engine": "model", "request_timeout": "timeout"}
MODEL_KEYS = ("model", "engine")
SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".venv", "venv", "env", "node_modules", "__pycache__", "site-packages"}
)


@dataclass
class Migration:
    """One file's result: its text before and after, or why it could not be read."""

    path: Path
    before: str = ""
    after: str = ""
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.error is None and self.before != self.after

    def diff(self) -> str:
        """A unified diff of the change (empty when nothing changed)."""
        return "".join(
            difflib.unified_diff(
                self.before.splitlines(keepends=True),
                self.after.splitlines(keepends=True),
                *(
                    (str(self.path), str(self.path))
                    if self.path.is_absolute()
                    else (f"a/{self.path.as_posix()}", f"b/{self.path.as_posix()}")
                ),
            )
        )


def _dotted(node: cst.BaseExpression) -> str | None:
    """``a.b.c`` for a chain of names, else ``None``."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr.value}" if base else None
    return None


def _chain(*names: str) -> cst.BaseExpression:
    node: cst.BaseExpression = cst.Name(names[0])
    for name in names[1:]:
        node = cst.Attribute(node, cst.Name(name))
    return node


def _root(node: cst.BaseExpression) -> str | None:
    """The name at the bottom of a chain of subscripts, attributes and calls."""
    while isinstance(node, cst.Subscript | cst.Attribute | cst.Call):
        node = node.value if not isinstance(node, cst.Call) else node.func
    return node.value if isinstance(node, cst.Name) else None


def _string(node: cst.BaseExpression) -> str | None:
    if isinstance(node, cst.SimpleString):
        value = node.evaluated_value
        return value if isinstance(value, str) else None
    return None


def _key(node: cst.Subscript) -> str | None:
    """The key of ``x["key"]`` when it can be an attribute name."""
    if len(node.slice) != 1 or not isinstance(node.slice[0].slice, cst.Index):
        return None
    key = _string(node.slice[0].slice.value)
    return key if key is not None and key.isidentifier() else None


class _Survey(cst.CSTVisitor):
    """What the rewrite needs to know first: the name ``openai`` is imported as, the names
    that hold API responses, and the names already taken."""

    def __init__(self) -> None:
        self.module_names: set[str] = set()
        self.responses: set[str] = set()
        self.taken: set[str] = set()
        self._assignments: list[tuple[list[str], cst.BaseExpression]] = []

    def visit_Import(self, node: cst.Import) -> None:
        for alias in node.names:
            if _dotted(alias.name) == "openai":
                bound = alias.asname.name if alias.asname else alias.name
                if isinstance(bound, cst.Name):
                    self.module_names.add(bound.value)

    def visit_Name(self, node: cst.Name) -> None:
        self.taken.add(node.value)

    def visit_Assign(self, node: cst.Assign) -> None:
        targets = [t.target.value for t in node.targets if isinstance(t.target, cst.Name)]
        self._assignments.append((targets, node.value))

    def visit_For(self, node: cst.For) -> None:
        if isinstance(node.target, cst.Name):
            self._assignments.append(([node.target.value], node.iter))

    def is_api_call(self, node: cst.BaseExpression) -> bool:
        if isinstance(node, cst.Await):
            node = node.expression
        if not isinstance(node, cst.Call):
            return False
        name = _dotted(node.func) or ""
        parts = name.split(".")
        return len(parts) == 3 and parts[0] in self.module_names and parts[1] in RESOURCES

    def settle(self) -> None:
        """Names holding responses: from API calls, and what is read or iterated from those."""
        grown = True
        while grown:
            grown = False
            for targets, value in self._assignments:
                holds = self.is_api_call(value) or _root(value) in self.responses
                if holds and not self.responses.issuperset(targets):
                    self.responses.update(targets)
                    grown = True


class _Rewrite(cst.CSTTransformer):
    def __init__(self, survey: _Survey, retired: Mapping[str, str]) -> None:
        self.survey = survey
        self.retired = retired
        self.client = self._free("client")
        self.async_client = self._free("async_client")
        self.uses_client = False
        self.uses_async = False
        self.notes: list[str] = []

    def _free(self, name: str) -> str:
        candidate = name
        while candidate in self.survey.taken:
            candidate = f"openai_{candidate}"
        return candidate

    def _is_openai(self, node: cst.BaseExpression) -> bool:
        return isinstance(node, cst.Name) and node.value in self.survey.module_names

    # -- calls and their arguments ---------------------------------------------------------

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        name = _dotted(original.func) or ""
        parts = name.split(".")
        if len(parts) == 3 and parts[0] in self.survey.module_names and parts[1] in RESOURCES:
            return self._api_call(parts[1], parts[2], updated)
        # response.get("key"[, default]) on a response object
        if (
            isinstance(updated.func, cst.Attribute)
            and updated.func.attr.value == "get"
            and _root(updated.func.value) in self.survey.responses
            and 1 <= len(updated.args) <= 2
        ):
            key = _string(updated.args[0].value)
            if key is not None and key.isidentifier():
                read = cst.Attribute(updated.func.value, cst.Name(key))
                if len(updated.args) == 1:
                    return read
                default = updated.args[1].value
                return cst.BooleanOperation(
                    read, cst.Or(), default, lpar=[cst.LeftParen()], rpar=[cst.RightParen()]
                )
        return updated

    def _api_call(self, resource: str, method: str, call: cst.Call) -> cst.Call:
        path = RESOURCES[resource]
        asynchronous = method.startswith("a") and method != "all"
        if asynchronous:
            method = method[1:]
        if len(path) == 1 or resource == "FineTuningJob":
            path = (*path, method)
        owner = self.async_client if asynchronous else self.client
        self.uses_async |= asynchronous
        self.uses_client |= not asynchronous
        if resource == "Edit":
            self.notes.append("the Edits API is gone: check the chat.completions call")
        args = [
            arg.with_changes(keyword=cst.Name(RENAMED_ARGS[arg.keyword.value]))
            if arg.keyword is not None and arg.keyword.value in RENAMED_ARGS
            else arg
            for arg in call.args
        ]
        return call.with_changes(func=_chain(owner, *path), args=args)

    def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
        if updated.keyword is not None and updated.keyword.value in MODEL_KEYS:
            return updated.with_changes(value=self._model(updated.value))
        return updated

    def leave_DictElement(
        self, original: cst.DictElement, updated: cst.DictElement
    ) -> cst.DictElement:
        if _string(updated.key) in MODEL_KEYS:
            return updated.with_changes(value=self._model(updated.value))
        return updated

    def leave_Param(self, original: cst.Param, updated: cst.Param) -> cst.Param:
        if updated.default is not None and updated.name.value in MODEL_KEYS:
            return updated.with_changes(default=self._model(updated.default))
        return updated

    def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
        """``MODEL = "text-davinci-003"``, ``MODELS = {...}``: names that say they hold models
        have every retired model string in their value replaced."""
        names = [t.target.value.lower() for t in updated.targets if isinstance(t.target, cst.Name)]
        if any(key in name for name in names for key in MODEL_KEYS):
            value = updated.value.visit(_ModelStrings(self._model))
            assert isinstance(value, cst.BaseExpression)
            return updated.with_changes(value=value)
        return updated

    def _model(self, value: cst.BaseExpression) -> cst.BaseExpression:
        name = _string(value)
        if name is None or name not in self.retired or not isinstance(value, cst.SimpleString):
            return value
        quote = value.quote
        return value.with_changes(value=f"{value.prefix}{quote}{self.retired[name]}{quote}")

    # -- response subscripts -----------------------------------------------------------------

    def leave_Subscript(
        self, original: cst.Subscript, updated: cst.Subscript
    ) -> cst.BaseExpression:
        key = _key(updated)
        if key is not None and _root(updated.value) in self.survey.responses:
            return cst.Attribute(updated.value, cst.Name(key), lpar=updated.lpar, rpar=updated.rpar)
        return updated

    # -- errors ------------------------------------------------------------------------------

    def leave_Attribute(
        self, original: cst.Attribute, updated: cst.Attribute
    ) -> cst.BaseExpression:
        inner = updated.value
        if (
            isinstance(inner, cst.Attribute)
            and inner.attr.value == "error"
            and self._is_openai(inner.value)
        ):
            name = updated.attr.value
            return cst.Attribute(inner.value, cst.Name(ERRORS.get(name, name)))
        return updated

    # -- module-level configuration and imports ----------------------------------------------

    def _config(self, statement: cst.BaseStatement) -> tuple[str, cst.BaseExpression] | None:
        """``("api_key", value)`` for a line ``openai.api_key = value``."""
        if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
            return None
        assign = statement.body[0]
        if not isinstance(assign, cst.Assign) or len(assign.targets) != 1:
            return None
        target = assign.targets[0].target
        if (
            isinstance(target, cst.Attribute)
            and self._is_openai(target.value)
            and target.attr.value in CONFIG
        ):
            return CONFIG[target.attr.value], assign.value
        return None

    def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        body: list[cst.BaseStatement] = list(updated.body)
        settings = [(i, found) for i, s in enumerate(body) if (found := self._config(s))]
        if not (self.uses_client or self.uses_async or settings):
            return updated
        arguments = [
            cst.Arg(value, keyword=cst.Name(name), equal=_EQUAL) for _, (name, value) in settings
        ]
        wanted = ["OpenAI"] if self.uses_client or not self.uses_async else []
        wanted += ["AsyncOpenAI"] if self.uses_async else []
        clients: list[cst.BaseSmallStatement] = [
            _assign(self.client if name == "OpenAI" else self.async_client, name, arguments)
            for name in wanted
        ]
        # The clients take the place of the last configuration line (its comments stay), or
        # come after the imports.
        if settings:
            last = settings[-1][0]
            line = body[last]
            assert isinstance(line, cst.SimpleStatementLine)
            body[last] = line.with_changes(body=clients[:1])
            body[last + 1 : last + 1] = [cst.SimpleStatementLine([c]) for c in clients[1:]]
            for index, _ in reversed(settings[:-1]):
                del body[index]
        else:
            where = _after_imports(body)
            body[where:where] = [cst.SimpleStatementLine([c]) for c in clients]
        self._import(body, wanted)
        return updated.with_changes(body=body)

    def _import(self, body: list[cst.BaseStatement], names: list[str]) -> None:
        """``from openai import OpenAI``: in place of ``import openai`` once nothing else uses
        the module, else after it."""
        importing = cst.ImportFrom(
            module=cst.Name("openai"), names=[cst.ImportAlias(cst.Name(n)) for n in names]
        )
        uses = _Uses(self.survey.module_names)
        for statement in body:
            statement.visit(uses)
        for index, statement in enumerate(body):
            imported = _imports_openai(statement)
            if imported is None:
                continue
            assert isinstance(statement, cst.SimpleStatementLine)
            only = len(statement.body) == 1 and len(statement.body[0].names) == 1  # type: ignore[attr-defined]
            if imported not in uses.used and only:
                body[index] = statement.with_changes(body=[importing])
            else:
                body.insert(index + 1, cst.SimpleStatementLine([importing]))
            return
        body.insert(_after_imports(body), cst.SimpleStatementLine([importing]))


class _ModelStrings(cst.CSTTransformer):
    """Applies ``replace`` to every plain string of an expression."""

    def __init__(self, replace: Callable[[cst.BaseExpression], cst.BaseExpression]) -> None:
        self.replace = replace

    def leave_SimpleString(
        self, original: cst.SimpleString, updated: cst.SimpleString
    ) -> cst.BaseExpression:
        return self.replace(updated)


_EQUAL = cst.AssignEqual(
    whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")
)


def _assign(name: str, factory: str, arguments: Sequence[cst.Arg]) -> cst.Assign:
    call = cst.Call(cst.Name(factory), list(arguments))
    return cst.Assign([cst.AssignTarget(cst.Name(name))], call)


def _imports_openai(statement: cst.BaseStatement) -> str | None:
    """The name ``import openai [as x]`` binds on this line, if it is one."""
    if not isinstance(statement, cst.SimpleStatementLine):
        return None
    for small in statement.body:
        if isinstance(small, cst.Import):
            for alias in small.names:
                if _dotted(alias.name) == "openai":
                    bound = alias.asname.name if alias.asname else alias.name
                    return bound.value if isinstance(bound, cst.Name) else None
    return None


def _after_imports(body: Sequence[cst.BaseStatement]) -> int:
    """The index after the module's docstring and leading imports."""
    where = 0
    for index, statement in enumerate(body):
        if isinstance(statement, cst.SimpleStatementLine) and all(
            isinstance(s, cst.Import | cst.ImportFrom)
            or (index == 0 and isinstance(s, cst.Expr) and isinstance(s.value, cst.SimpleString))
            for s in statement.body
        ):
            where = index + 1
        else:
            break
    return where


class _Uses(cst.CSTVisitor):
    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.used: set[str] = set()

    def visit_Import(self, node: cst.Import) -> bool:
        return False  # the import itself is not a use

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        return False

    def visit_Name(self, node: cst.Name) -> None:
        if node.value in self.names:
            self.used.add(node.value)


def migrate_source(code: str, retired: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """``code`` rewritten for openai>=1.0 and current models, and notes for people.

    Raises :class:`SyntaxError` or :class:`libcst.ParserSyntaxError` for code that does not
    parse.
    """
    retired = replacements() if retired is None else retired
    if "openai" not in code and not any(name in code for name in retired):
        ast.parse(code)  # nothing to rewrite: Python's own parser only checks the syntax
        return code, []
    module = cst.parse_module(code)
    survey = _Survey()
    module.visit(survey)
    survey.settle()
    rewrite = _Rewrite(survey, retired)
    migrated = module.visit(rewrite)
    return migrated.code, rewrite.notes


def python_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The ``.py`` files at ``paths`` (directories walked, skipping virtualenvs and VCS)."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_dir() and (child.name in SKIPPED_DIRS or child.name.startswith(".")):
                    continue
                if child.is_dir() or child.suffix == ".py":
                    yield from python_files([child])
        else:
            yield path


def migrate_paths(
    paths: Iterable[Path], retired: Mapping[str, str] | None = None
) -> Iterator[Migration]:
    """Each Python file at ``paths``, migrated (nothing is written)."""
    table = replacements() if retired is None else retired
    for path in python_files(paths):
        result = Migration(path)
        try:
            result.before = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            result.error = f"cannot read: {getattr(exc, 'strerror', None) or exc}"
            yield result
            continue
        try:
            result.after, result.notes = migrate_source(result.before, table)
        except (SyntaxError, cst.ParserSyntaxError) as exc:
            result.error = f"not valid Python: {_syntax_error(result.before, exc)}"
        yield result


def _syntax_error(code: str, exc: SyntaxError | cst.ParserSyntaxError) -> str:
    """Where the code is wrong, as Python itself says it (libcst's positions are rougher)."""
    try:
        ast.parse(code)
    except SyntaxError as error:
        return f"{error.msg} (line {error.lineno}, column {error.offset})"
    return exc.message if isinstance(exc, cst.ParserSyntaxError) else str(exc)
