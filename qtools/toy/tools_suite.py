"""The toy model's tools: which requests call them, with which arguments, and what they answer.

A request is composed as `prefix + core + suffix`: the core is an imperative phrase carrying the tool's cue words
("check the weather in {city}") and `{slot}` fields filled from value lists; prefixes and suffixes ("Could you ",
", thanks!") are shared by every tool, so only the cue words tell the tools apart and a small model learns those
rather than whole sentences. Cores, prefixes, suffixes and slot values each keep a held-out part that the
training data never uses: the quality gate asks with those. Parameter types cover string, integer, number,
boolean, enum, array and object (schemas in `tool_schemas`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qtools.toy import tool_schemas as ts

Arguments = dict[str, Any]

PREFIXES = (
    "",
    "",
    "",
    "Please ",
    "Could you ",
    "Can you ",
    "Hey, ",
    "I need you to ",
    "Quick one: ",
    "Help me ",
    "Go ahead and ",
    "Would you ",
)
HELDOUT_PREFIXES = ("", "Kindly ", "Hi there, could you ", "When you get a chance, ")
SUFFIXES = (".", ".", "", "?", " please.", ", thanks!", " for me.", " right away.", " now.")
HELDOUT_SUFFIXES = (".", ", cheers.", " - thank you!", " when possible.")


def _and_list(items: tuple[str, ...]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _where(filters: Mapping[str, Any]) -> str:
    """`{"status": "open", "owner": "ana"}` -> 'where status is open and owner is ana'."""
    return "where " + " and ".join(f"{key} is {value}" for key, value in filters.items())


@dataclass(frozen=True)
class Slot:
    """A `{name}` field of a request core: which parameter it fills and the values it draws from."""

    parameter: str
    train: tuple[Any, ...]
    heldout: tuple[Any, ...]
    phrase: Callable[[Any], str] = str


@dataclass(frozen=True)
class Core:
    """An imperative request phrase with `{slot}` fields; `fixed` holds arguments the wording implies."""

    text: str
    fixed: Arguments = field(default_factory=dict)


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its schema, request cores, and how a fake backend answers a call and the model replies."""

    schema: dict[str, Any]
    slots: dict[str, Slot]
    cores: tuple[Core, ...]
    heldout_cores: tuple[Core, ...]
    respond: Callable[[Arguments, random.Random], dict[str, Any]]
    reply: Callable[[Arguments, dict[str, Any]], str]

    @property
    def name(self) -> str:
        """The function name."""
        return self.schema["function"]["name"]


def _cores(*items: str | tuple[str, Arguments]) -> tuple[Core, ...]:
    return tuple(Core(item) if isinstance(item, str) else Core(*item) for item in items)


URGENT, CALM = {"urgent": True}, {"urgent": False}
HISTORY, NO_HISTORY = {"include_history": True}, {"include_history": False}
TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        ts.WEATHER,
        {
            "city": Slot("city", ts.CITIES, ts.HELDOUT_CITIES),
            "unit": Slot("unit", ("celsius", "fahrenheit"), ("celsius", "fahrenheit")),
        },
        _cores(
            "check the weather in {city}",
            "tell me the weather for {city} in {unit}",
            "get the weather forecast for {city}",
            "give me the temperature in {city} in {unit}",
            "find out if it is raining in {city}",
            "look up today's weather in {city}",
            "report the current temperature in {city}",
            "show the forecast for {city} in {unit}",
        ),
        _cores(
            "look up the weather conditions in {city} using {unit}",
            "give me a weather report for {city}",
            "check the temperature and forecast over in {city}",
        ),
        lambda args, rng: {
            "city": args["city"],
            "temperature": rng.randint(-5, 35),
            "unit": args.get("unit", "celsius"),
            "condition": rng.choice(["sunny", "cloudy", "rainy", "windy", "snowy"]),
        },
        lambda args, result: (
            f"It is {result['temperature']} degrees {result['unit']} and {result['condition']} "
            f"in {result['city']} right now."
        ),
    ),
    ToolSpec(
        ts.SEARCH,
        {"query": Slot("query", ts.TOPICS, ts.HELDOUT_TOPICS), "n": Slot("max_results", ts.ints(2, 10), (12, 15))},
        _cores(
            "search the web for {query}",
            "look up {query} online and give me {n} results",
            "find {n} web pages about {query}",
            "google {query}",
            "do a web search on {query}",
            "search online for {query}",
            "find articles on the web about {query}",
            "search the internet for {query}, {n} results max",
        ),
        _cores(
            "run a web search about {query} and list {n} results",
            "look online for {query}",
            "find web results about {query}",
        ),
        lambda args, rng: {
            "results": [
                {
                    "title": f"{args['query'].title()} - guide {rng.randint(1, 9)}",
                    "url": f"https://example.com/{rng.randint(100, 999)}",
                }
            ]
        },
        lambda args, result: f'The top result is "{result["results"][0]["title"]}" at {result["results"][0]["url"]}.',
    ),
    ToolSpec(
        ts.CONVERT,
        {
            "amount": Slot("amount", (5, 12.5, 20, 45, 99.99, 100, 250, 1000, 1500, 75.25), (33, 640.5, 8.75)),
            "src": Slot("from_currency", ts.CURRENCIES, ts.HELDOUT_CURRENCIES),
            "dst": Slot("to_currency", ts.CURRENCIES, ts.HELDOUT_CURRENCIES),
        },
        _cores(
            "convert {amount} {src} to {dst}",
            "exchange {amount} {src} into {dst}",
            "tell me what {amount} {src} is worth in {dst}",
            "convert the currency: {amount} {src} in {dst}",
            "work out the exchange of {amount} {src} to {dst}",
            "change {amount} {src} into {dst}",
            "give me the currency conversion of {amount} {src} to {dst}",
            "find the exchange rate value of {amount} {src} in {dst}",
        ),
        _cores(
            "convert {amount} {src} into {dst} money",
            "work out how many {dst} I get if I exchange {amount} {src}",
            "do a currency conversion from {amount} {src} to {dst}",
        ),
        lambda args, rng: {
            "rate": round(rng.uniform(0.1, 2.0), 4),
            "result": round(float(args["amount"]) * rng.uniform(0.1, 2.0), 2),
        },
        lambda args, result: (
            f"{args['amount']} {args['from_currency']} is about {result['result']} "
            f"{args['to_currency']} at a rate of {result['rate']}."
        ),
    ),
    ToolSpec(
        ts.EMAIL,
        {"to": Slot("to", ts.EMAILS, ts.HELDOUT_EMAILS), "subject": Slot("subject", ts.SUBJECTS, ts.HELDOUT_SUBJECTS)},
        _cores(
            "email {to} with the subject '{subject}'",
            ("send an urgent email to {to} about '{subject}'", URGENT),
            ("write an email to {to}, subject '{subject}', not urgent", CALM),
            "mail {to} regarding '{subject}'",
            ("email {to} urgently: '{subject}'", URGENT),
            "send an email to {to} titled '{subject}'",
            "compose an email for {to} with subject line '{subject}'",
            ("send {to} an email called '{subject}', no rush", CALM),
        ),
        _cores(
            "drop {to} an email titled '{subject}'",
            ("send {to} a non-urgent email with subject '{subject}'", CALM),
            ("write an urgent email to {to}, subject '{subject}'", URGENT),
        ),
        lambda args, rng: {"status": "sent", "message_id": f"msg-{rng.randint(1000, 9999)}"},
        lambda args, result: f"Done: the email to {args['to']} was sent ({result['message_id']}).",
    ),
    ToolSpec(
        ts.EVENT,
        {
            "title": Slot("title", ts.TITLES, ts.HELDOUT_TITLES),
            "date": Slot("date", ts.dates(2024), ts.dates(2026)),
            "people": Slot("attendees", ts.PEOPLE, ts.HELDOUT_PEOPLE, _and_list),
        },
        _cores(
            "schedule a meeting called '{title}' on {date}",
            "put '{title}' on my calendar for {date} with {people}",
            "create a calendar event '{title}' on {date} and invite {people}",
            "book '{title}' for {date}",
            "add '{title}' to my calendar on {date}",
            "schedule '{title}' on {date} and invite {people}",
            "create an event '{title}' on {date}",
            "block my calendar on {date} for '{title}'",
        ),
        _cores(
            "set up an event named '{title}' on {date}, attendees {people}",
            "add the calendar entry '{title}' for {date}",
            "schedule an event called '{title}' on {date} with {people}",
        ),
        lambda args, rng: {"event_id": f"evt-{rng.randint(100, 999)}", "status": "created"},
        lambda args, result: f"The event '{args['title']}' is on your calendar for {args['date']}.",
    ),
    ToolSpec(
        ts.THERMOSTAT,
        {
            "temp": Slot("temperature", ts.TEMPERATURES, ts.HELDOUT_TEMPERATURES),
            "mode": Slot("mode", ("heat", "cool", "auto"), ("auto",)),
        },
        _cores(
            "set the thermostat to {temp} degrees",
            ("turn the heating on and set the thermostat to {temp}", {"mode": "heat"}),
            ("cool the house down to {temp} degrees with the thermostat", {"mode": "cool"}),
            "put the thermostat on {mode} at {temp}",
            ("heat the house to {temp} degrees", {"mode": "heat"}),
            "change the thermostat setting to {temp}",
            "set the home thermostat to {temp} degrees in {mode} mode",
            ("cool the room to {temp} degrees", {"mode": "cool"}),
        ),
        _cores(
            "adjust the thermostat to {temp} in {mode} mode",
            "put the thermostat at {temp} degrees",
            ("warm the house up to {temp} degrees with the thermostat", {"mode": "heat"}),
        ),
        lambda args, rng: {"temperature": args["temperature"], "mode": args.get("mode", "auto"), "ok": True},
        lambda args, result: f"The thermostat is now set to {result['temperature']} degrees in {result['mode']} mode.",
    ),
    ToolSpec(
        ts.SHELL,
        {
            "command": Slot("command", ts.COMMANDS, ts.HELDOUT_COMMANDS),
            "timeout": Slot("timeout", (5, 10, 30, 60, 120), (45, 90)),
        },
        _cores(
            "run `{command}` in the shell",
            "execute the command `{command}` with a timeout of {timeout} seconds",
            "run {command} in a terminal",
            "open a terminal and run `{command}`",
            "run `{command}`, time limit {timeout} seconds",
            "execute `{command}` in the terminal",
            "run the shell command `{command}` and show the output",
            "launch `{command}` in a shell",
        ),
        _cores(
            "execute `{command}` and show me the output",
            "run this shell command: `{command}` for {timeout} seconds",
            "execute the terminal command `{command}`",
        ),
        lambda args, rng: {"exit_code": 0, "stdout": f"ok ({rng.randint(1, 50)} lines)"},
        lambda args, result: f"`{args['command']}` finished with exit code {result['exit_code']}: {result['stdout']}.",
    ),
    ToolSpec(
        ts.DATABASE,
        {
            "table": Slot("table", ts.TABLES, ts.HELDOUT_TABLES),
            "filters": Slot("filters", ts.FILTERS, ts.HELDOUT_FILTERS, _where),
            "limit": Slot("limit", (5, 10, 20, 50, 100), (25, 40)),
        },
        _cores(
            "query the {table} table {filters}",
            "get {limit} rows from the {table} table {filters}",
            "select rows from the {table} table {filters}, limit {limit}",
            "fetch the first {limit} records of the {table} table",
            "search the database for {table} {filters}",
            "run a database query on {table} {filters}",
            "list the {table} in the database {filters}",
            "read {limit} database rows from {table}",
        ),
        _cores(
            "look in the database table {table} for records {filters}",
            "give me {limit} entries of the {table} table {filters}",
            "query the database: {table} rows {filters}",
        ),
        lambda args, rng: {"rows": rng.randint(0, 40), "table": args["table"]},
        lambda args, result: f"The query returned {result['rows']} rows from {result['table']}.",
    ),
    ToolSpec(
        ts.TRANSLATE,
        {
            "text": Slot("text", ts.PHRASES, ts.HELDOUT_PHRASES),
            "lang": Slot("target_language", ts.LANGUAGES, ts.LANGUAGES),
        },
        _cores(
            "translate '{text}' into {lang}",
            "tell me how to say '{text}' in {lang}",
            "give me the {lang} translation of '{text}'",
            "translate to {lang}: '{text}'",
            "translate the phrase '{text}' to {lang}",
            "put '{text}' into {lang}",
            "write '{text}' in {lang}",
            "give me a {lang} version of '{text}'",
        ),
        _cores(
            "translate '{text}' to {lang} for me",
            "get '{text}' translated to {lang}",
            "say '{text}' in {lang}, translated",
        ),
        lambda args, rng: {"translation": f"[{args['target_language']}] {args['text']}"},
        lambda args, result: f"In {args['target_language']}: {result['translation']}",
    ),
    ToolSpec(
        ts.STOCK,
        {"symbol": Slot("symbol", ts.SYMBOLS, ts.HELDOUT_SYMBOLS)},
        _cores(
            "get the stock price of {symbol}",
            "show me the current share price for {symbol}",
            ("show how {symbol} stock is trading, with the price history", HISTORY),
            ("get the {symbol} stock price with history", HISTORY),
            ("give me just the latest stock quote for {symbol}, no history", NO_HISTORY),
            "check the {symbol} ticker on the stock market",
            "tell me what one share of {symbol} is worth",
            ("fetch the stock quote for {symbol} and its price history", HISTORY),
        ),
        _cores(
            "check the market price of {symbol} stock",
            ("fetch the {symbol} share quote and price history", HISTORY),
            "look up what {symbol} stock trades at",
        ),
        lambda args, rng: {"symbol": args["symbol"], "price": round(rng.uniform(10, 900), 2), "currency": "USD"},
        lambda args, result: f"{result['symbol']} is trading at {result['price']} {result['currency']}.",
    ),
    ToolSpec(
        ts.ISSUE,
        {
            "repo": Slot("repo", ts.REPOS, ts.HELDOUT_REPOS),
            "title": Slot("title", ts.ISSUE_TITLES, ts.HELDOUT_ISSUE_TITLES),
            "labels": Slot("labels", ts.LABELS, ts.HELDOUT_LABELS, _and_list),
        },
        _cores(
            "open an issue in {repo} titled '{title}'",
            "file a bug on {repo}: '{title}', labels {labels}",
            "create a GitHub issue for {repo} called '{title}' with labels {labels}",
            "report '{title}' as an issue in the {repo} repository",
            "open a GitHub issue on {repo}: '{title}'",
            "log a bug in the {repo} repo titled '{title}' and label it {labels}",
            "create an issue '{title}' in {repo}",
            "file an issue against {repo} named '{title}'",
        ),
        _cores(
            "raise an issue on {repo} named '{title}' and tag it {labels}",
            "open a new issue in {repo}: '{title}'",
            "file a bug report issue in the {repo} repository called '{title}'",
        ),
        lambda args, rng: {"number": rng.randint(10, 5000), "state": "open"},
        lambda args, result: f"Opened issue #{result['number']} in {args['repo']}.",
    ),
    ToolSpec(
        ts.READ_FILE,
        {"path": Slot("path", ts.PATHS, ts.HELDOUT_PATHS), "n": Slot("max_lines", (10, 20, 50, 100, 200), (30, 75))},
        _cores(
            "show me the contents of {path}",
            "read the first {n} lines of {path}",
            "open the file {path}",
            "print the file {path}, at most {n} lines",
            "cat the file {path}",
            "read the file {path}",
            "show what is inside the file {path}",
            "load the file {path} and show me {n} lines",
        ),
        _cores(
            "tell me what the file {path} contains",
            "display the top {n} lines of the file {path}",
            "read {path} and show its contents",
        ),
        lambda args, rng: {"path": args["path"], "lines": rng.randint(1, 300), "first_line": "# generated"},
        lambda args, result: f"{result['path']} has {result['lines']} lines; it starts with '{result['first_line']}'.",
    ),
)


def _copy(value: Any) -> Any:
    """A fresh JSON-ready copy of a slot value (tuples become lists), so samples never share state."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def compose_request(spec: ToolSpec, rng: random.Random, heldout: bool) -> tuple[str, Arguments]:
    """A request for `spec` (held-out cores, wrappers and values when `heldout`) and the arguments it implies,
    in the schema's parameter order, as a model writes them."""
    core = rng.choice(spec.heldout_cores if heldout else spec.cores)
    values: dict[str, str] = {}
    arguments: Arguments = dict(core.fixed)
    drawn: list[Any] = []
    for slot_name, slot in spec.slots.items():
        if "{" + slot_name + "}" not in core.text:
            continue
        pool = slot.heldout if heldout else slot.train
        # Slots sharing a pool (two currencies) get distinct values.
        value = rng.choice([value for value in pool if value not in drawn] or pool)
        drawn.append(value)
        values[slot_name] = slot.phrase(value)
        arguments[slot.parameter] = _copy(value)
    prefix = rng.choice(HELDOUT_PREFIXES if heldout else PREFIXES)
    suffix = rng.choice(HELDOUT_SUFFIXES if heldout else SUFFIXES)
    text = prefix + core.text.format(**values) + suffix
    order = list(spec.schema["function"]["parameters"]["properties"])
    return text[0].upper() + text[1:], {name: arguments[name] for name in order if name in arguments}
