"""BigQuery SQL, parsed: the one way the project reads a BigQuery statement, on both backends.

BigQuery ML statements and ``ML.*`` table-function calls are read here too, for both backends (the
lifecycle binds and checks its SQL templates with them; the local engine runs what they find):

* a script is split into statements at its ``;`` tokens (:func:`split_statements`);
* ``CREATE [OR REPLACE] MODEL [IF NOT EXISTS] m [TRANSFORM(...)] [OPTIONS(...)] AS query``,
  ``DROP MODEL [IF EXISTS] m`` and ``ALTER MODEL [IF EXISTS] m SET OPTIONS(...)`` are parsed by
  :func:`parse_model_statement`;
* each ``ML.<function>(MODEL m, ...)`` call of any other statement is found by
  :func:`find_ml_calls`, with its model, input relation(s) and options checked against its
  documented argument shape (:data:`SIGNATURES`).

sqlglot's BigQuery tokenizer does the lexing (it knows strings, comments and quoted identifiers, so
``'ML.PREDICT('`` in a string is not a call). Model names ``project.dataset.model``,
``dataset.model`` and ``model`` (quoted or not) map to the plain model identifier: the local
warehouse has one dataset. ``OPTIONS(...)`` and ``STRUCT(...)`` arguments take literal values
(:func:`literal_value`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.dialects.bigquery import BigQuery
from sqlglot.tokens import Token, TokenType

from lakehouse_ml.core.errors import BqmlError, WarehouseError
from lakehouse_ml.core.identifiers import check_identifier

# ML table functions the local warehouse runs, with their argument shapes in the documented order
# (bigqueryml-syntax-<function> reference pages). "?" marks an optional argument; "input" is
# ``TABLE t`` or ``(query)``; "struct" is ``STRUCT(value AS name, ...)``; "array" is an ARRAY of
# thresholds (``GENERATE_ARRAY(...)`` or ``[...]``).
SIGNATURES: dict[str, tuple[str, ...]] = {
    "PREDICT": ("input", "struct?"),
    "EVALUATE": ("input?", "struct?"),
    "DETECT_ANOMALIES": ("struct?", "input?"),
    "EXPLAIN_PREDICT": ("input", "struct?"),
    "GLOBAL_EXPLAIN": ("struct?",),
    "FEATURE_INFO": (),
    "TRAINING_INFO": (),
    "WEIGHTS": ("struct?",),
    "ROC_CURVE": ("input?", "array?", "struct?"),
    "CONFUSION_MATRIX": ("input?", "struct?"),
    "TRANSFORM": ("input",),
    # No MODEL argument: two input relations (base, study); the optional trailing MODEL only adds
    # a Vertex AI visualization_link and is refused locally.
    "VALIDATE_DATA_DRIFT": ("input", "input", "struct?", "model?"),
}
# Functions that take no MODEL as their first argument.
_MODEL_FREE = ("VALIDATE_DATA_DRIFT",)
_SIGNATURE_TEXT = {
    "PREDICT": "ML.PREDICT(MODEL m, {TABLE t | (query)} [, STRUCT(...)])",
    "EVALUATE": "ML.EVALUATE(MODEL m [, {TABLE t | (query)}] [, STRUCT(...)])",
    "DETECT_ANOMALIES": "ML.DETECT_ANOMALIES(MODEL m [, STRUCT(contamination "
    "AS contamination)] [, {TABLE t | (query)}])",
    "EXPLAIN_PREDICT": "ML.EXPLAIN_PREDICT(MODEL m, {TABLE t | (query)} [, STRUCT(...)])",
    "GLOBAL_EXPLAIN": "ML.GLOBAL_EXPLAIN(MODEL m [, STRUCT(class_level_explain AS class_level_explain)])",
    "FEATURE_INFO": "ML.FEATURE_INFO(MODEL m)",
    "TRAINING_INFO": "ML.TRAINING_INFO(MODEL m)",
    "WEIGHTS": "ML.WEIGHTS(MODEL m [, STRUCT(standardize AS standardize)])",
    "ROC_CURVE": "ML.ROC_CURVE(MODEL m [, {TABLE t | (query)}] [, GENERATE_ARRAY(thresholds)] [, STRUCT(...)])",
    "CONFUSION_MATRIX": "ML.CONFUSION_MATRIX(MODEL m [, {TABLE t | (query)}] [, STRUCT(threshold AS threshold)])",
    "TRANSFORM": "ML.TRANSFORM(MODEL m, {TABLE t | (query)})",
    "VALIDATE_DATA_DRIFT": (
        "ML.VALIDATE_DATA_DRIFT({TABLE base | (query)}, {TABLE "
        "study | (query)} [, STRUCT(... AS num_histogram_buckets, "
        "... AS categorical_default_threshold, [('col', 0.1)] AS thresholds, ...)])"
    ),
}

# =================================================================================================
# The BigQueryML dialect: sqlglot's BigQuery dialect with BigQuery ML's table functions and
# ALTER MODEL as typed nodes
# =================================================================================================


class MLFunction(exp.Expression, exp.Func):
    """``ML.<this>(MODEL model, ...)``: one BigQuery ML table function, its arguments by role.

    ``model`` is the model's table reference (None for ML.VALIDATE_DATA_DRIFT, whose optional
    trailing ``MODEL`` is ``trailing_model``); ``inputs`` the input relations in order (an
    :class:`exp.Table` for ``TABLE t``, an :class:`exp.Subquery` for ``(query)``); ``struct`` the
    ``STRUCT(...)`` options; ``array`` the ROC_CURVE thresholds.
    """

    arg_types = {
        "this": True,
        "model": False,
        "inputs": False,
        "struct": False,
        "array": False,
        "trailing_model": False,
    }

    @property
    def function(self) -> str:
        return self.name.upper()


class AlterModelStatement(exp.Expression):
    """``ALTER MODEL [IF EXISTS] this SET OPTIONS(expressions)`` (bigqueryml-syntax-alter-model)."""

    arg_types = {"this": True, "exists": False, "expressions": False}


def _preceded_by_ml(parser: Any) -> bool:
    """Whether the function whose ``(`` was just consumed is written ``ML.<name>(``."""
    i = parser._index
    tokens = parser._tokens
    return (
        i >= 4
        and tokens[i - 3].token_type == TokenType.DOT
        and tokens[i - 4].token_type in (TokenType.VAR, TokenType.IDENTIFIER)
        and tokens[i - 4].text.upper() == "ML"
        and not (i >= 5 and tokens[i - 5].token_type == TokenType.DOT)
    )


_DESCRIBED = {"input": "an input relation", "struct": "a STRUCT", "array": "an array", "model": "a MODEL"}


class BigQueryML(BigQuery):
    """BigQuery with BigQuery ML: ``ML.<function>(MODEL m, ...)`` table functions parse into
    :class:`MLFunction` and ``ALTER MODEL … SET OPTIONS`` into :class:`AlterModelStatement`; both
    generate BigQuery SQL again."""

    class Parser(BigQuery.Parser):
        FUNCTION_PARSERS = {
            **BigQuery.Parser.FUNCTION_PARSERS,
            **{name: (lambda self, _n=name: self._parse_ml_function(_n)) for name in SIGNATURES},
        }
        STATEMENT_PARSERS = {
            **BigQuery.Parser.STATEMENT_PARSERS,
            TokenType.ALTER: lambda self: self._parse_alter_model_or_alter(),
        }

        def _parse_function_call(self, *args: Any, **kwargs: Any) -> exp.Expr | None:
            # ML.<name>(MODEL ...) or AI.<name>(MODEL ...) that the local warehouse does not run.
            prev, curr, nxt = self._prev, self._curr, self._next
            if (
                curr is not None
                and prev is not None
                and prev.token_type == TokenType.DOT
                and self._index >= 2
                and self._tokens[self._index - 2].text.upper() in ("ML", "AI")
                and nxt is not None
                and nxt.token_type == TokenType.L_PAREN
                and self._index + 2 < len(self._tokens)
                and self._tokens[self._index + 2].token_type == TokenType.MODEL
            ):
                function = f"{self._tokens[self._index - 2].text.upper()}.{curr.text.upper()}"
                if function.startswith("AI.") or curr.text.upper() not in SIGNATURES:
                    supported = ", ".join(f"ML.{f}" for f in SIGNATURES)
                    raise BqmlError(
                        f"{function} is not supported by the local BigQuery ML engine. It runs {supported}. "
                        "Run this query on the gcp backend (LAKEHOUSE_ML_BACKEND=gcp)."
                    )
            return super()._parse_function_call(*args, **kwargs)

        def _parse_ml_function(self, name: str) -> exp.Expr:
            if not _preceded_by_ml(self):  # PREDICT(...), TRANSFORM(...) … without ML.
                inherited = BigQuery.Parser.FUNCTION_PARSERS.get(name)
                if inherited is not None:
                    return inherited(self)
                args = self._parse_function_args(alias=False)
                builder = self.FUNCTIONS.get(name)
                return (
                    builder(args) if builder else self.expression(exp.Anonymous(this=name, expressions=args))
                )
            if name not in _MODEL_FREE and not self._match(TokenType.MODEL, advance=False):
                # ML.PREDICT(...) without MODEL: not a table function (a UDF of that name).
                args = self._parse_function_args(alias=False)
                return self.expression(exp.Anonymous(this=name, expressions=args))
            start = self._index - 4
            signature = _SIGNATURE_TEXT[name]
            arguments: list[tuple[str, exp.Expr]] = []
            while not self._match(TokenType.R_PAREN, advance=False):
                if self._curr.token_type == TokenType.SENTINEL:
                    raise BqmlError(f"ML.{name}(...) is never closed. Syntax: {signature}.")
                if self._match(TokenType.COMMA, advance=False):
                    raise BqmlError(f"ML.{name} has an empty argument. Syntax: {signature}.")
                arguments.append(self._parse_ml_argument(name))
                if not self._match(TokenType.COMMA):
                    break
            if self._curr.token_type == TokenType.SENTINEL:
                raise BqmlError(f"ML.{name}(...) is never closed. Syntax: {signature}.")
            if not self._match(TokenType.R_PAREN, advance=False):
                after = arguments[-1][1].sql("bigquery") if arguments else ""
                raise BqmlError(
                    f"Unexpected {self._curr.text!r} after {after} in ML.{name}. Syntax: {signature}."
                )
            node = self.expression(_ml_function(name, arguments))
            node.meta["start"] = self._tokens[start].start  # the character offset of ML.
            return node

        def _parse_ml_argument(self, name: str) -> tuple[str, exp.Expr]:
            if self._match(TokenType.MODEL):
                return "model", self._parse_ml_name(name, "MODEL")
            if self._match(TokenType.TABLE):
                return "input", self._parse_ml_name(name, "TABLE")
            if self._match(TokenType.L_PAREN, advance=False):
                if self._next.token_type == TokenType.R_PAREN:
                    raise BqmlError(f"ML.{name} has an empty input query ().")
                start = self._index
                self._advance()
                if self._curr.token_type in (TokenType.SELECT, TokenType.WITH, TokenType.L_PAREN):
                    query = self._parse_select(nested=True, parse_set_operation=True)
                else:  # a statement that is not a query: refused when the input is evaluated
                    query = (
                        self._parse_statement() if self._curr.token_type in self.STATEMENT_PARSERS else None
                    )
                if query is not None and self._match(TokenType.R_PAREN):
                    if self._match_set((TokenType.COMMA, TokenType.R_PAREN), advance=False):
                        return "input", exp.Subquery(this=query)
                self._retreat(start)
            kind = "unknown"
            if self._match(TokenType.STRUCT, advance=False):
                kind = "struct"
            elif self._match(TokenType.L_BRACKET, advance=False) or (
                self._curr.text.upper() in ("GENERATE_ARRAY", "ARRAY")
            ):
                kind = "array"
            value = self._parse_assignment()
            if value is None:
                found = (
                    self._curr.text
                    if self._curr.token_type != TokenType.SENTINEL
                    else "the end of the statement"
                )
                raise BqmlError(f"ML.{name}: unexpected {found!r}. Syntax: {_SIGNATURE_TEXT[name]}.")
            return kind, value

        def _parse_ml_name(self, name: str, keyword: str) -> exp.Table:
            table = self._parse_table_parts()
            if table is None or not table.name:
                found = (
                    self._curr.text
                    if self._curr.token_type != TokenType.SENTINEL
                    else "the end of the statement"
                )
                what = "model" if keyword == "MODEL" else "table"
                raise WarehouseError(f"Expected a {what} name, found {found!r}.")
            if not self._match_set((TokenType.COMMA, TokenType.R_PAREN, TokenType.SENTINEL), advance=False):
                raise BqmlError(
                    f"Unexpected {self._curr.text!r} after {keyword} {table.sql('bigquery')} in ML.{name}. "
                    f"Syntax: {_SIGNATURE_TEXT[name]}."
                )
            return table

        def _parse_alter_model_or_alter(self) -> exp.Expr | None:
            if not self._match(TokenType.MODEL):
                return self._parse_alter()
            exists = self._parse_exists()
            model = self._parse_table_parts()
            if not (self._match(TokenType.SET) and self._match_text_seq("OPTIONS")):
                raise BqmlError(
                    "ALTER MODEL supports only ALTER MODEL [IF EXISTS] name SET OPTIONS(...) "
                    "(bigqueryml-syntax-alter-model)."
                )
            if not self._match(TokenType.L_PAREN, advance=False):
                raise BqmlError("Expected '(' after SET OPTIONS.")
            options = self._parse_wrapped_csv(self._parse_assignment, optional=False)
            if self._curr.token_type not in (TokenType.SEMICOLON, TokenType.SENTINEL):
                raise BqmlError(f"Unexpected {self._curr.text!r} after ALTER MODEL … SET OPTIONS(...).")
            return self.expression(AlterModelStatement(this=model, exists=exists, expressions=options))

    class Generator(BigQuery.Generator):
        TRANSFORMS = {
            **BigQuery.Generator.TRANSFORMS,
            MLFunction: lambda self, e: self.mlfunction_sql(e),
            AlterModelStatement: lambda self, e: self.altermodelstatement_sql(e),
        }

        def mlfunction_sql(self, expression: MLFunction) -> str:
            args: list[str] = []
            model = expression.args.get("model")
            if model is not None:
                args.append(f"MODEL {self.sql(model)}")
            inputs = list(expression.args.get("inputs") or [])
            struct = expression.args.get("struct")
            array = expression.args.get("array")
            function = expression.function
            relations = [
                f"TABLE {self.sql(node)}" if isinstance(node, exp.Table) else self.sql(node)
                for node in inputs
            ]
            if function == "DETECT_ANOMALIES":  # STRUCT before the input (the documented order)
                args += [self.sql(struct)] if struct is not None else []
                args += relations
            else:
                args += relations
                args += [self.sql(array)] if array is not None else []
                args += [self.sql(struct)] if struct is not None else []
            trailing = expression.args.get("trailing_model")
            if trailing is not None:
                args.append(f"MODEL {self.sql(trailing)}")
            return f"ML.{function}({', '.join(args)})"

        def altermodelstatement_sql(self, expression: AlterModelStatement) -> str:
            exists = " IF EXISTS" if expression.args.get("exists") else ""
            options = ", ".join(self.sql(e) for e in expression.expressions)
            return f"ALTER MODEL{exists} {self.sql(expression.this)} SET OPTIONS ({options})"

        def table_parts(self, expression: exp.Table) -> str:
            if isinstance(expression.this, MLFunction):
                return self.sql(expression.this)  # ML.PREDICT(...) in FROM: no ML. prefix twice
            return super().table_parts(expression)

        def dot_sql(self, expression: exp.Dot) -> str:
            if isinstance(expression.expression, MLFunction):
                return self.sql(expression.expression)
            return super().dot_sql(expression)


def _ml_function(name: str, arguments: Sequence[tuple[str, exp.Expr]]) -> MLFunction:
    """The node of ``ML.<name>(arguments)``, with the arguments checked against its signature."""
    signature = _SIGNATURE_TEXT[name]
    expected = list(SIGNATURES[name])
    node_args: dict[str, Any] = {"this": name, "inputs": []}
    rest = list(arguments)
    if name not in _MODEL_FREE:
        kind, model = rest.pop(0)
        node_args["model"] = model
    for kind, value in rest:
        while expected and expected[0].rstrip("?") != kind and expected[0].endswith("?"):
            expected.pop(0)
        if not expected or expected[0].rstrip("?") != kind:
            if kind == "model" and name in _MODEL_FREE:
                raise BqmlError(
                    f"ML.{name}(..., MODEL {value.sql('bigquery')}) is not supported locally: the MODEL "
                    "argument only adds visualization_link, a Vertex AI model monitoring console URL. Leave it out "
                    "(the drift rows are the same), or run the query on the gcp backend."
                )
            shown = (
                f"TABLE {value.sql('bigquery')}"
                if kind == "input" and isinstance(value, exp.Table)
                else (f"MODEL {value.sql('bigquery')}" if kind == "model" else value.sql("bigquery"))
            )
            raise BqmlError(
                f"ML.{name} does not take {_DESCRIBED.get(kind, 'the argument')} {shown!r} here. Syntax: {signature}."
            )
        expected.pop(0)
        if kind == "input":
            node_args["inputs"].append(value)
        elif kind == "model":
            node_args["trailing_model"] = value
        else:
            node_args[kind] = value
    if [e for e in expected if not e.endswith("?")]:
        if name in _MODEL_FREE:
            raise BqmlError(
                f"ML.{name} needs a base and a study input: TABLE t or (query). Syntax: {signature}."
            )
        raise BqmlError(f"ML.{name} needs an input: TABLE t or (query). Syntax: {signature}.")
    return MLFunction(**node_args)


def parse_bigquery_ml(sql: str) -> list[exp.Expression]:
    """Parse a BigQuery script with BigQuery ML (:class:`BigQueryML`) into statements."""
    try:
        return [s for s in sqlglot.parse(sql, read=BigQueryML) if s is not None]
    except sqlglot.errors.ParseError as err:
        details = "; ".join(
            f"line {e.get('line')}, column {e.get('col')}: {e.get('description')}"
            + (f" near {e.get('highlight')!r}" if e.get("highlight") else "")
            for e in err.errors
        ) or str(err)
        raise WarehouseError(f"Could not parse the BigQuery SQL: {details}") from None
    except sqlglot.errors.TokenError as err:
        raise WarehouseError(f"Could not parse the BigQuery SQL: {err}") from None


def ml_functions(tree: exp.Expression) -> list[MLFunction]:
    """The ML table-function nodes of ``tree`` that are not inside another one, in textual order
    (a WITH clause before the query that uses it)."""
    found = [
        n
        for n in tree.walk(bfs=False, prune=lambda n: isinstance(n, MLFunction))
        if isinstance(n, MLFunction)
    ]
    return sorted(found, key=lambda n: n.meta.get("start", 0))


_WORD = re.compile(r"^[A-Za-z0-9_]+$")
_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def parse_bigquery(sql: str) -> list[exp.Expression]:
    """Parse a BigQuery script into statements, with a clear error on bad SQL."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="bigquery") if s is not None]
    except sqlglot.errors.ParseError as err:
        details = "; ".join(
            f"line {e.get('line')}, column {e.get('col')}: {e.get('description')}"
            + (f" near {e.get('highlight')!r}" if e.get("highlight") else "")
            for e in err.errors
        ) or str(err)
        raise WarehouseError(f"Could not parse the BigQuery SQL: {details}") from None
    if not statements:
        raise WarehouseError("The SQL is empty: give at least one statement.")
    return statements


def single_select(sql: str) -> exp.Query:
    """Parse ``sql`` as exactly one query (SELECT, WITH … SELECT, or set operation)."""
    statements = parse_bigquery(sql)
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        kinds = ", ".join(type(s).__name__.upper() for s in statements)
        raise WarehouseError(f"Expected exactly one SELECT query, got: {kinds}.")
    return statements[0]


# =================================================================================================
# Tokens
# =================================================================================================


def tokenize(sql: str) -> list[Token]:
    """BigQuery tokens of ``sql`` (``start``/``end`` are inclusive character offsets)."""
    try:
        return BigQuery().tokenize(sql)
    except sqlglot.errors.TokenError as err:
        raise WarehouseError(f"Could not parse the BigQuery SQL: {err}") from None


def _text(sql: str, tokens: Sequence[Token], lo: int, hi: int) -> str:
    """The source text of ``tokens[lo:hi]`` (with the comments and spaces between them)."""
    if hi <= lo:
        return ""
    return sql[tokens[lo].start : tokens[hi - 1].end + 1]


def _closing(tokens: Sequence[Token], i: int) -> int:
    """Index of the ``)`` (or ``]``) that closes the bracket at ``tokens[i]``."""
    opening = tokens[i].token_type
    pairs = {TokenType.L_PAREN: TokenType.R_PAREN, TokenType.L_BRACKET: TokenType.R_BRACKET}
    closing = pairs[opening]
    depth = 0
    for j in range(i, len(tokens)):
        kind = tokens[j].token_type
        if kind == opening:
            depth += 1
        elif kind == closing:
            depth -= 1
            if depth == 0:
                return j
    raise WarehouseError(
        f"Could not parse the BigQuery SQL: the {tokens[i].text!r} at line {tokens[i].line}, "
        f"column {tokens[i].col} is never closed."
    )


def _split_top_level(tokens: Sequence[Token], lo: int, hi: int) -> list[tuple[int, int]]:
    """Ranges of ``tokens[lo:hi]`` between commas that are not inside brackets."""
    parts: list[tuple[int, int]] = []
    depth = 0
    start = lo
    for j in range(lo, hi):
        kind = tokens[j].token_type
        if kind in (TokenType.L_PAREN, TokenType.L_BRACKET):
            depth += 1
        elif kind in (TokenType.R_PAREN, TokenType.R_BRACKET):
            depth -= 1
        elif kind == TokenType.COMMA and depth == 0:
            parts.append((start, j))
            start = j + 1
    parts.append((start, hi))
    return parts


def _is(token: Token | None, word: str) -> bool:
    return token is not None and token.token_type != TokenType.STRING and token.text.upper() == word


def split_statements(sql: str) -> list[str]:
    """The statements of a script, split at ``;`` tokens (empty statements dropped)."""
    tokens = tokenize(sql)
    statements: list[str] = []
    start = 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            text = sql[start : token.start]
            if tokenize(text):
                statements.append(text)
            start = token.end + 1
    rest = sql[start:]
    if tokenize(rest):
        statements.append(rest)
    return statements


@functools.lru_cache(maxsize=512)
def mentions_bigquery_ml(sql: str) -> bool:
    """Whether ``sql`` may hold BigQuery ML (a ``MODEL`` keyword or an ``ML.``/``AI.`` call).

    A cheap token test: when False the SQL takes the plain translation path unchanged.
    """
    try:
        tokens = tokenize(sql)
    except WarehouseError:
        return False
    for i, token in enumerate(tokens):
        if token.token_type == TokenType.MODEL:
            return True
        if (
            token.text.upper() in ("ML", "AI")
            and i + 1 < len(tokens)
            and tokens[i + 1].token_type == TokenType.DOT
        ):
            return True
    return False


# =================================================================================================
# Parsed forms
# =================================================================================================


@dataclass(frozen=True)
class ModelRef:
    """A model as written (``raw``) and the plain identifier it maps to (``name``)."""

    raw: str
    name: str


@dataclass(frozen=True)
class CreateModel:
    model: ModelRef
    replace: bool
    if_not_exists: bool
    options: dict[str, Any]
    query: str
    transform: str | None = None  # the TRANSFORM select list, as written
    name_span: tuple[int, int] = (0, 0)  # where the model name is in the statement's text


@dataclass(frozen=True)
class DropModel:
    model: ModelRef
    if_exists: bool


@dataclass(frozen=True)
class AlterModel:
    model: ModelRef
    if_exists: bool
    options: dict[str, Any]


ModelStatement = CreateModel | DropModel | AlterModel


@dataclass(frozen=True)
class InputRelation:
    """``TABLE name`` (``table`` set) or ``(query)`` (``query`` set, as BigQuery SQL); ``node`` is
    the parsed relation (an :class:`exp.Table` or an :class:`exp.Subquery`)."""

    table: str | None = None
    query: str | None = None
    node: exp.Expression | None = field(default=None, compare=False, repr=False)

    def tree(self) -> exp.Expression:
        """The relation as a query tree of its own (a copy)."""
        if isinstance(self.node, exp.Subquery):
            return self.node.this.copy()
        if self.query is not None:
            return one_ml_statement(self.query)
        return exp.select("*").from_(exp.to_table(self.table))

    def sql(self) -> str:
        return self.tree().sql(BigQueryML)


@dataclass(frozen=True)
class MLCall:
    """One ``ML.<function>(MODEL m, ...)`` call, read from its :class:`MLFunction` ``node``.

    ``ML.VALIDATE_DATA_DRIFT`` has no model (``model`` is None) and two input relations
    (``inputs``: base, study)."""

    function: str
    model: ModelRef | None
    input: InputRelation | None
    options: dict[str, Any]
    thresholds: list[float] | None
    inputs: tuple[InputRelation, ...] = ()
    node: MLFunction | None = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        """The call as BigQuery SQL."""
        return self.node.sql(BigQueryML) if self.node is not None else ""


# =================================================================================================
# Names and literal values
# =================================================================================================


def _name_token(token: Token) -> bool:
    return token.token_type in (TokenType.IDENTIFIER, TokenType.VAR) or (
        token.token_type not in (TokenType.STRING, TokenType.NUMBER) and bool(_WORD.match(token.text))
    )


def _take_path(sql: str, tokens: Sequence[Token], i: int, what: str) -> tuple[list[str], str, int]:
    """Read a dotted path (``p-1.ds.m``, ```p.ds.m```, ``ds.m``) at ``tokens[i]``; return its
    parts, its source text and the index after it."""
    if i >= len(tokens) or not _name_token(tokens[i]):
        found = tokens[i].text if i < len(tokens) else "the end of the statement"
        raise WarehouseError(f"Expected a {what} name, found {found!r}.")
    parts: list[str] = []
    current = ""
    j = i
    expect_name = True
    while j < len(tokens):
        token = tokens[j]
        contiguous = j > i and token.start == tokens[j - 1].end + 1
        if expect_name and _name_token(token):
            pieces = token.text.split(".") if token.token_type == TokenType.IDENTIFIER else [token.text]
            current += pieces[0]
            if len(pieces) > 1:
                parts.append(current)
                parts.extend(pieces[1:-1])
                current = pieces[-1]
            expect_name = False
        elif not expect_name and token.token_type == TokenType.DOT:
            parts.append(current)
            current = ""
            expect_name = True
        elif not expect_name and token.token_type == TokenType.DASH and contiguous:
            current += "-"  # an unquoted project id with hyphens (my-project.dataset.model)
            expect_name = True
        elif expect_name and token.token_type == TokenType.NUMBER and contiguous:
            # my-project-2.ds.m: the tokenizer reads "2." as one number.
            if token.text.endswith("."):
                parts.append(current + token.text[:-1])
                current = ""
            else:
                current += token.text
                expect_name = False
        else:
            break
        j += 1
    parts.append(current)
    return parts, sql[tokens[i].start : tokens[j - 1].end + 1], j


def _model_ref(parts: list[str], raw: str) -> ModelRef:
    if not 1 <= len(parts) <= 3 or any(not p for p in parts):
        raise WarehouseError(
            f"Invalid model name {raw}: write model, dataset.model or project.dataset.model."
        )
    name = check_identifier(parts[-1], "model")
    if len(parts) >= 2:
        check_identifier(parts[-2], "dataset")
    if len(parts) == 3 and not _PROJECT.match(parts[0]):
        raise WarehouseError(f"Invalid project {parts[0]!r} in model name {raw}.")
    return ModelRef(raw=raw, name=name)


def parse_model_name(text: str) -> ModelRef:
    """``project.dataset.model`` / ``dataset.model`` / ``model`` (quoted or not) → :class:`ModelRef`."""
    tokens = tokenize(text)
    parts, raw, end = _take_path(text, tokens, 0, "model")
    if end != len(tokens):
        raise WarehouseError(f"Invalid model name {text.strip()!r}.")
    return _model_ref(parts, raw)


def _table_name(parts: list[str], raw: str) -> str:
    if not 1 <= len(parts) <= 3 or any(not p for p in parts):
        raise WarehouseError(f"Invalid table name {raw}.")
    for part in parts[-2:]:
        check_identifier(part, "table")
    return parts[-1]


def parse_expression(text: str) -> exp.Expression:
    try:
        parsed = sqlglot.parse_one(text, read="bigquery")
    except sqlglot.errors.ParseError as err:
        raise WarehouseError(f"Could not parse {text.strip()!r}: {err}") from None
    if parsed is None:
        raise WarehouseError(f"Expected a value, found {text.strip()!r}.")
    return parsed


def _number(text: str) -> int | float:
    if re.fullmatch(r"[0-9]+", text):
        return int(text)
    return float(text)


def _generate_array(node: exp.GenerateSeries, params: Mapping[str, Any] | None) -> list[int | float]:
    """``GENERATE_ARRAY(start, end[, step])`` as BigQuery computes it (end inclusive)."""
    start = literal_value(node.args["start"], params)
    end = literal_value(node.args["end"], params)
    step = literal_value(node.args["step"], params) if node.args.get("step") is not None else 1
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, end, step)):
        raise BqmlError("GENERATE_ARRAY takes numbers.")
    if step == 0:
        raise BqmlError("GENERATE_ARRAY: the step cannot be 0.")
    as_int = all(isinstance(v, int) for v in (start, end, step))
    # Exact decimal arithmetic, so GENERATE_ARRAY(0.4, 0.6, 0.01) ends at 0.6 as in BigQuery.
    d_start, d_end, d_step = (decimal.Decimal(repr(v)) for v in (start, end, step))
    count = int((d_end - d_start) / d_step) + 1
    if count > 100_000:
        raise BqmlError("GENERATE_ARRAY would produce more than 100,000 values.")
    values = [d_start + i * d_step for i in range(max(count, 0))]
    return [int(v) if as_int else float(v) for v in values]


def literal_value(node: exp.Expression, params: Mapping[str, Any] | None = None) -> Any:
    """The Python value of a literal ``OPTIONS``/``STRUCT`` value.

    Strings, numbers (negative ones too), ``TRUE``/``FALSE``, ``NULL``, arrays, ``STRUCT``s
    (named fields → dict, unnamed → list), ``DATE``/``TIMESTAMP``/``DATETIME`` literals,
    ``INTERVAL n unit``, ``GENERATE_ARRAY(...)`` and query parameters (``@name``, from ``params``).
    """
    if isinstance(node, exp.Paren):
        return literal_value(node.this, params)
    if isinstance(node, exp.Literal):
        return node.this if node.is_string else _number(node.this)
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Neg):
        value = literal_value(node.this, params)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BqmlError(f"Cannot negate {node.this.sql('bigquery')}: it is not a number.")
        return -value
    if isinstance(node, exp.Array):
        return [literal_value(e, params) for e in node.expressions]
    if isinstance(node, exp.Tuple):  # ('col_a', 0.1): an unnamed STRUCT (ML.VALIDATE_DATA_DRIFT thresholds)
        return [literal_value(e, params) for e in node.expressions]
    if (
        isinstance(node, exp.Cast)
        and isinstance(node.this, exp.Array)
        and node.to.is_type(exp.DataType.Type.ARRAY)
    ):
        return literal_value(node.this, params)  # a typed array literal: ARRAY<STRUCT<STRING, FLOAT64>>[...]
    if isinstance(node, exp.Struct):
        fields = node.expressions
        named = [isinstance(f, (exp.PropertyEQ, exp.Alias)) for f in fields]
        if all(named) and fields:
            out: dict[str, Any] = {}
            for f in fields:
                key = (f.this.name if isinstance(f, exp.PropertyEQ) else f.alias).lower()
                value_node = f.expression if isinstance(f, exp.PropertyEQ) else f.this
                if key in out:
                    raise BqmlError(f"STRUCT field {key} is given twice.")
                out[key] = literal_value(value_node, params)
            return out
        if any(named):
            raise BqmlError(f"Name every STRUCT field or none: {node.sql('bigquery')}.")
        return [literal_value(f, params) for f in fields]
    if isinstance(node, exp.Parameter):
        name = node.name
        if params is None or name not in params:
            raise BqmlError(f"Query parameter @{name} has no value; pass it as a parameter.")
        return params[name]
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) and node.this.is_string:
        kind = node.to.this
        text = node.this.this
        try:
            if kind == exp.DataType.Type.DATE:
                return dt.date.fromisoformat(text)
            if kind in (exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPTZ):
                stamp = dt.datetime.fromisoformat(text.replace(" UTC", "+00:00").replace("Z", "+00:00"))
                return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
            if kind == exp.DataType.Type.DATETIME:
                return dt.datetime.fromisoformat(text)
        except ValueError:
            raise BqmlError(f"Invalid {kind.value} literal {text!r}.") from None
    if isinstance(node, exp.Interval) and node.unit is not None:
        amount = literal_value(node.this, params)
        amount = _number(amount) if isinstance(amount, str) else amount
        unit = node.unit.name.upper()
        seconds = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400, "WEEK": 604800}
        if unit in seconds and isinstance(amount, (int, float)):
            return dt.timedelta(seconds=amount * seconds[unit])
    if isinstance(node, exp.GenerateSeries):
        return _generate_array(node, params)
    raise BqmlError(
        f"{node.sql('bigquery')} is not a literal value. OPTIONS and STRUCT arguments take literals: "
        "strings, numbers, TRUE/FALSE, NULL, arrays [...], STRUCT(...), DATE/TIMESTAMP '...', "
        "GENERATE_ARRAY(...) or @parameters."
    )


def parse_options(
    sql: str, tokens: Sequence[Token], lo: int, hi: int, params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``name = value`` list in ``tokens[lo:hi]`` (inside ``OPTIONS(...)``) as a dict with
    lower-case names."""
    options: dict[str, Any] = {}
    if hi <= lo:
        return options
    for a, b in _split_top_level(tokens, lo, hi):
        if a == b:
            raise BqmlError("OPTIONS(...) has an empty entry (a stray comma).")
        if b - a < 3 or tokens[a + 1].token_type != TokenType.EQ or not _name_token(tokens[a]):
            raise BqmlError(f"Invalid option {_text(sql, tokens, a, b)!r}: write name = value.")
        name = tokens[a].text.lower()
        if name in options:
            raise BqmlError(f"Option {name.upper()} is given twice.")
        options[name] = literal_value(parse_expression(_text(sql, tokens, a + 2, b)), params)
    return options


def _option_values(entries: Sequence[exp.Expression], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``name = value`` nodes (``SET OPTIONS(...)``) as a dict with lower-case names."""
    options: dict[str, Any] = {}
    for entry in entries:
        if not isinstance(entry, exp.EQ) or not isinstance(entry.this, (exp.Column, exp.Identifier, exp.Var)):
            raise BqmlError(f"Invalid option {entry.sql('bigquery')!r}: write name = value.")
        name = entry.this.name.lower()
        if name in options:
            raise BqmlError(f"Option {name.upper()} is given twice.")
        options[name] = literal_value(entry.expression, params)
    return options


# =================================================================================================
# Model statements
# =================================================================================================


def _expect_paren(sql: str, tokens: Sequence[Token], i: int, after: str) -> int:
    if i >= len(tokens) or tokens[i].token_type != TokenType.L_PAREN:
        raise BqmlError(f"Expected '(' after {after}.")
    return _closing(tokens, i)


def parse_model_statement(sql: str, params: Mapping[str, Any] | None = None) -> ModelStatement | None:
    """``CREATE MODEL``, ``DROP MODEL`` or ``ALTER MODEL`` parsed; None for any other statement."""
    tokens = tokenize(sql)
    if not tokens:
        return None
    first = tokens[0].token_type
    if first == TokenType.CREATE:
        return _parse_create(sql, tokens, params)
    if (
        first in (TokenType.DROP, TokenType.ALTER)
        and len(tokens) > 1
        and tokens[1].token_type == TokenType.MODEL
    ):
        statement = one_ml_statement(sql)
        if isinstance(statement, AlterModelStatement):
            return AlterModel(
                model=_model_ref(*_table_parts(statement.this)),
                if_exists=bool(statement.args.get("exists")),
                options=_option_values(statement.expressions, params),
            )
        tables = statement.args.get("tables") or [] if isinstance(statement, exp.Drop) else []
        extra = [
            k.upper()
            for k, v in statement.args.items()
            if v and k not in ("tables", "kind", "exists", "this")
        ]
        if extra:
            raise BqmlError(
                f"Unexpected {', '.join(extra)} in DROP MODEL: write DROP MODEL [IF EXISTS] name."
            )
        if len(tables) != 1:
            raise BqmlError(f"Expected DROP MODEL [IF EXISTS] name, got {sql.strip()[:80]!r}.")
        return DropModel(
            model=_model_ref(*_table_parts(tables[0])), if_exists=bool(statement.args.get("exists"))
        )
    return None


def _parse_create(sql: str, tokens: Sequence[Token], params: Mapping[str, Any] | None) -> CreateModel | None:
    i = 1
    replace = False
    if (
        i + 1 < len(tokens)
        and tokens[i].token_type == TokenType.OR
        and tokens[i + 1].token_type == TokenType.REPLACE
    ):
        replace = True
        i += 2
    if i >= len(tokens) or tokens[i].token_type != TokenType.MODEL:
        if (
            i + 1 < len(tokens)
            and tokens[i].text.upper() in ("TEMP", "TEMPORARY")
            and tokens[i + 1].token_type == TokenType.MODEL
        ):
            raise BqmlError(
                f"CREATE {tokens[i].text.upper()} MODEL is not supported: "
                "write CREATE [OR REPLACE] MODEL [IF NOT EXISTS]."
            )
        return None
    i += 1
    if_not_exists = False
    if _is(tokens[i] if i < len(tokens) else None, "IF"):
        if not (
            i + 2 < len(tokens)
            and tokens[i + 1].token_type == TokenType.NOT
            and tokens[i + 2].token_type == TokenType.EXISTS
        ):
            raise BqmlError("Expected IF NOT EXISTS.")
        if_not_exists = True
        i += 3
    if replace and if_not_exists:
        raise BqmlError("CREATE OR REPLACE MODEL and IF NOT EXISTS cannot be combined.")
    name_start = tokens[i].start if i < len(tokens) else len(sql)
    parts, raw, i = _take_path(sql, tokens, i, "model")
    model = _model_ref(parts, raw)
    name_span = (name_start, name_start + len(raw))
    transform = None
    options: dict[str, Any] = {}
    if i < len(tokens) and _is(tokens[i], "TRANSFORM"):
        close = _expect_paren(sql, tokens, i + 1, "TRANSFORM")
        transform = _text(sql, tokens, i + 2, close)
        if not transform.strip():
            raise BqmlError("TRANSFORM() is empty: list the columns to train on.")
        i = close + 1
    for clause in ("INPUT", "OUTPUT", "REMOTE"):
        if i < len(tokens) and _is(tokens[i], clause):
            raise BqmlError(
                f"CREATE MODEL … {clause} (remote and imported models) is not supported by the local "
                "BigQuery ML engine; it trains models from an AS query. Run it on the gcp backend."
            )
    if i < len(tokens) and _is(tokens[i], "OPTIONS"):
        close = _expect_paren(sql, tokens, i + 1, "OPTIONS")
        options = parse_options(sql, tokens, i + 2, close, params)
        i = close + 1
    if i < len(tokens) and _is(tokens[i], "TRANSFORM"):
        raise BqmlError("TRANSFORM(...) goes before OPTIONS(...) in CREATE MODEL.")
    if i >= len(tokens) or tokens[i].token_type != TokenType.ALIAS:
        found = repr(tokens[i].text) if i < len(tokens) else "nothing"
        raise BqmlError(
            f"CREATE MODEL {raw} needs AS followed by the training query (found {found}); "
            "the local engine trains models from an AS query."
        )
    query = _text(sql, tokens, i + 1, len(tokens))
    if (
        i + 2 < len(tokens)
        and tokens[i + 1].token_type == TokenType.L_PAREN
        and _is(tokens[i + 2], "TRAINING_DATA")
    ):
        raise BqmlError(
            "CREATE MODEL … AS (training_data AS (...), custom_holiday AS (...)) is for ARIMA_PLUS "
            "models, which the local engine does not train."
        )
    if not query.strip():
        raise BqmlError(f"CREATE MODEL {raw}: the AS query is empty.")
    return CreateModel(
        model=model,
        replace=replace,
        if_not_exists=if_not_exists,
        options=options,
        query=query,
        transform=transform,
        name_span=name_span,
    )


def rename_created_model(sql: str, model: str) -> str:
    """``sql`` (one ``CREATE MODEL`` statement, as in ``sql/models/``) creating the plain model
    name ``model`` instead of its own: only the name changes, the rest of the text is kept as
    written (a training run's own BigQuery ML model, :func:`lakehouse_ml.lifecycle.models.training_sql`)."""
    check_identifier(model, "model")
    statement = parse_model_statement(sql)
    if not isinstance(statement, CreateModel):
        raise BqmlError("Only a CREATE MODEL statement can be given another model name.")
    start, end = statement.name_span
    return sql[:start] + model + sql[end:]


# =================================================================================================
# ML table-function calls
# =================================================================================================


def _table_parts(table: exp.Table) -> tuple[list[str], str]:
    parts = [table.args[k].name if table.args.get(k) is not None else "" for k in ("catalog", "db", "this")]
    while parts and parts[0] == "" and len(parts) > 1:
        parts.pop(0)
    return parts, table.sql("bigquery")


def _input_relation(node: exp.Expression, function: str) -> InputRelation:
    if isinstance(node, exp.Table):
        parts, raw = _table_parts(node)
        return InputRelation(table=_table_name(parts, raw), node=node)
    return InputRelation(query=node.this.sql(BigQueryML), node=node)


def ml_call(node: MLFunction, params: Mapping[str, Any] | None = None) -> MLCall:
    """The checked arguments of one :class:`MLFunction` node: model name, input relations and
    literal STRUCT and thresholds values (``@name`` parameters from ``params``)."""
    function = node.function
    model = None
    if node.args.get("model") is not None:
        model = _model_ref(*_table_parts(node.args["model"]))
    inputs = tuple(_input_relation(i, function) for i in node.args.get("inputs") or [])
    options: dict[str, Any] = {}
    struct = node.args.get("struct")
    if struct is not None:
        value = literal_value(struct, params)
        if isinstance(value, list) and not value:
            value = {}
        if not isinstance(value, dict):
            example = (
                "0.2 AS categorical_default_threshold" if function in _MODEL_FREE else "0.6 AS threshold"
            )
            raise BqmlError(f"ML.{function}: name the STRUCT fields, e.g. STRUCT({example}).")
        options = value
    thresholds = None
    if node.args.get("array") is not None:
        values = literal_value(node.args["array"], params)
        if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise BqmlError(f"ML.{function}: the thresholds must be an ARRAY<FLOAT64>.")
        thresholds = [float(v) for v in values]
    if node.args.get("trailing_model") is not None:
        raise BqmlError(
            f"ML.{function}(..., MODEL {node.args['trailing_model'].sql('bigquery')}) is not supported locally: "
            "the MODEL argument only adds visualization_link, a Vertex AI model monitoring console URL. Leave it "
            "out (the drift rows are the same), or run the query on the gcp backend."
        )
    if function in _MODEL_FREE:
        return MLCall(function, None, None, options, None, inputs=inputs, node=node)
    return MLCall(function, model, inputs[0] if inputs else None, options, thresholds, node=node)


def find_ml_calls(sql: str | exp.Expression, params: Mapping[str, Any] | None = None) -> list[MLCall]:
    """The outermost ``ML.<function>(MODEL m, ...)`` calls of ``sql`` (text or a parsed tree), in
    textual order.

    Calls nested inside another call's input query are part of that input (they are found when
    the input is evaluated). An ML or AI function with a ``MODEL`` argument that the local
    warehouse does not run fails when parsed, naming it.
    """
    trees = parse_bigquery_ml(sql) if isinstance(sql, str) else [sql]
    return [ml_call(node, params) for tree in trees for node in ml_functions(tree)]


def ml_function_name(node: exp.Expression) -> str | None:
    """``ML.NAME(...)`` as sqlglot parses it (a Dot of ML and a function) → ``"NAME"``."""
    if (
        isinstance(node, exp.Dot)
        and isinstance(node.this, (exp.Identifier, exp.Column, exp.Var))
        and node.this.name.upper() == "ML"
        and isinstance(node.expression, exp.Func)
    ):
        func = node.expression
        return (func.name if isinstance(func, exp.Anonymous) else func.sql_name()).upper()
    return None


# =================================================================================================
# TRANSFORM clause
# =================================================================================================


def parse_select_list(text: str) -> list[exp.Expression]:
    """The items of a ``TRANSFORM(select_list)`` as sqlglot expressions."""
    select = parse_expression("SELECT " + text)
    if not isinstance(select, exp.Select) or select.args.get("from_") or select.args.get("where"):
        raise BqmlError(f"Invalid TRANSFORM clause {text.strip()!r}: list expressions with aliases.")
    return list(select.expressions)


def transform_output_names(items: Sequence[exp.Expression], input_columns: Sequence[str]) -> list[str]:
    """The column names a TRANSFORM select list produces over input columns ``input_columns``."""
    names: list[str] = []
    for item in items:
        if isinstance(item, exp.Star):
            excluded = {c.name.lower() for c in item.args.get("except_") or item.args.get("except") or []}
            names.extend(c for c in input_columns if c.lower() not in excluded)
        else:
            names.append(item.alias_or_name)
    return names


def one_ml_statement(text: str) -> exp.Expression:
    """Exactly one statement, parsed with BigQuery ML (:class:`BigQueryML`)."""
    statements = parse_bigquery_ml(text)
    if len(statements) != 1:
        raise WarehouseError(
            "Expected one statement." if statements else "The SQL is empty: give one statement."
        )
    return statements[0]


def statement_returns_rows(text: str, params: Mapping[str, Any] | None = None) -> bool:
    """Whether a statement (which may hold ML calls) is a query."""
    if parse_model_statement(text, params) is not None:
        return False
    statement = one_ml_statement(text)
    find_ml_calls(statement, params)  # the calls' arguments are checked
    return isinstance(statement, exp.Query)
