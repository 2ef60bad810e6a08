"""The toy model's tools: twelve JSON-schema tools, the requests that should call them, and their results.

Every tool carries request templates whose `{slot}` fields are filled from value lists; each slot and each tool
keeps some values and templates apart (`heldout`) so the quality gate asks with phrasings and arguments the
model never saw. Parameter types cover string, integer, number, boolean, enum, array and object.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Arguments = dict[str, Any]


def _and_list(items: tuple[str, ...]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _where(filters: Mapping[str, Any]) -> str:
    """`{"status": "open", "owner": "ana"}` -> 'where status is open and owner is ana'."""
    return "where " + " and ".join(f"{key} is {value}" for key, value in filters.items())


@dataclass(frozen=True)
class Slot:
    """A `{name}` field of a request template: which parameter it fills and the values it draws from."""

    parameter: str
    train: tuple[Any, ...]
    heldout: tuple[Any, ...]
    phrase: Callable[[Any], str] = str


@dataclass(frozen=True)
class Template:
    """A request text with `{slot}` fields; `fixed` holds arguments the wording implies (e.g. urgent=True)."""

    text: str
    fixed: Arguments = field(default_factory=dict)


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its schema, request templates, and how a fake backend answers a call and the model replies."""

    schema: dict[str, Any]
    slots: dict[str, Slot]
    templates: tuple[Template, ...]
    heldout_templates: tuple[Template, ...]
    respond: Callable[[Arguments, random.Random], dict[str, Any]]
    reply: Callable[[Arguments, dict[str, Any]], str]

    @property
    def name(self) -> str:
        """The function name."""
        return self.schema["function"]["name"]


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


CITIES = (
    "Paris",
    "Berlin",
    "Tokyo",
    "Madrid",
    "Rome",
    "Cairo",
    "Toronto",
    "Sydney",
    "Chicago",
    "Mumbai",
    "Seoul",
    "Dublin",
    "Vienna",
    "Prague",
    "Oslo",
    "Lima",
    "Nairobi",
    "Boston",
    "Denver",
    "Zurich",
    "Athens",
    "Warsaw",
    "Bangkok",
    "Istanbul",
    "Havana",
    "Quito",
    "Lagos",
    "Manila",
)
HELDOUT_CITIES = ("Lisbon", "Helsinki", "Montreal", "Kyoto", "Santiago", "Budapest", "Auckland", "Seattle")
WEATHER = _tool(
    "get_weather",
    "Get the current weather for a city.",
    {
        "city": {"type": "string", "description": "Name of the city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
    },
    ["city"],
)

TOPICS = (
    "python asyncio tutorial",
    "rust borrow checker",
    "best hiking trails in Utah",
    "sourdough recipe",
    "how to center a div",
    "linux kernel release notes",
    "git rebase vs merge",
    "docker compose examples",
    "history of the printing press",
    "solar panel efficiency",
    "kubernetes ingress setup",
    "postgres index types",
    "climate of Iceland",
    "jazz piano chords",
    "regex lookahead syntax",
)
HELDOUT_TOPICS = (
    "electric bike reviews",
    "sql window functions",
    "volcanoes in Chile",
    "typescript generics",
    "bread baking temperature",
)
SEARCH = _tool(
    "search_web",
    "Search the web and return the top results.",
    {
        "query": {"type": "string", "description": "Search query"},
        "max_results": {"type": "integer", "description": "How many results to return"},
    },
    ["query"],
)

CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "CNY", "INR", "SEK")
HELDOUT_CURRENCIES = ("NOK", "MXN", "BRL", "ZAR")
CONVERT = _tool(
    "convert_currency",
    "Convert an amount of money from one currency to another.",
    {
        "amount": {"type": "number", "description": "Amount to convert"},
        "from_currency": {"type": "string", "description": "ISO code of the source currency"},
        "to_currency": {"type": "string", "description": "ISO code of the target currency"},
    },
    ["amount", "from_currency", "to_currency"],
)

EMAILS = (
    "alice@example.com",
    "bob@work.org",
    "carol@mail.net",
    "dave@corp.io",
    "erin@school.edu",
    "frank@shop.com",
    "grace@lab.org",
    "heidi@studio.net",
    "ivan@bank.com",
    "judy@clinic.org",
)
HELDOUT_EMAILS = ("mallory@agency.gov", "oscar@farm.co", "peggy@press.com", "trent@court.org")
SUBJECTS = (
    "Quarterly report",
    "Lunch on Friday",
    "Server outage",
    "Project kickoff",
    "Invoice 4521",
    "Holiday schedule",
    "Code review",
    "Team offsite",
    "Budget update",
    "Release notes",
)
HELDOUT_SUBJECTS = ("Contract renewal", "Security audit", "Welcome aboard", "Parking permits")
EMAIL = _tool(
    "send_email",
    "Send an email message.",
    {
        "to": {"type": "string", "description": "Recipient address"},
        "subject": {"type": "string", "description": "Subject line"},
        "urgent": {"type": "boolean", "description": "Mark the message as urgent"},
    },
    ["to", "subject"],
)

TITLES = (
    "Design review",
    "Standup",
    "Dentist",
    "Sprint planning",
    "Board meeting",
    "Yoga class",
    "Interview with Sam",
    "Budget sync",
    "Product demo",
    "Book club",
)
HELDOUT_TITLES = ("Architecture deep dive", "Piano lesson", "Quarterly retro")
PEOPLE = (
    ("Alice",),
    ("Bob", "Carol"),
    ("Dan", "Eve", "Frank"),
    ("Grace",),
    ("Heidi", "Ivan"),
    ("Judy", "Ken"),
    ("Liam",),
    ("Mia", "Noah", "Olivia"),
)
HELDOUT_PEOPLE = (("Peter", "Quinn"), ("Rosa",), ("Sven", "Tara", "Uma"))
EVENT = _tool(
    "create_event",
    "Create a calendar event.",
    {
        "title": {"type": "string", "description": "Event title"},
        "date": {"type": "string", "description": "Date as YYYY-MM-DD"},
        "attendees": {"type": "array", "items": {"type": "string"}, "description": "People to invite"},
    },
    ["title", "date"],
)

TEMPERATURES = (16, 17.5, 18, 19, 19.5, 21, 22, 22.5, 24, 25, 26.5, 27)
HELDOUT_TEMPERATURES = (20.5, 23, 23.5, 25.5)
THERMOSTAT = _tool(
    "set_thermostat",
    "Set the home thermostat.",
    {
        "temperature": {"type": "number", "description": "Target temperature in degrees"},
        "mode": {"type": "string", "enum": ["heat", "cool", "auto"], "description": "Operating mode"},
    },
    ["temperature"],
)

COMMANDS = (
    "ls -la",
    "git status",
    "df -h",
    "pytest -q",
    "du -sh .",
    "uname -a",
    "make test",
    "npm install",
    "docker ps",
    "free -m",
    "git log --oneline",
    "python --version",
)
HELDOUT_COMMANDS = ("cargo build", "whoami", "top -b -n 1", "pip list")
SHELL = _tool(
    "run_shell",
    "Run a shell command and return its output.",
    {
        "command": {"type": "string", "description": "The command line to run"},
        "timeout": {"type": "integer", "description": "Time limit in seconds"},
    },
    ["command"],
)

TABLES = ("users", "orders", "invoices", "products", "customers", "employees", "tickets", "payments")
HELDOUT_TABLES = ("shipments", "reviews", "suppliers")
FILTERS = (
    {"status": "active"},
    {"country": "France"},
    {"status": "open", "owner": "ana"},
    {"city": "Oslo"},
    {"plan": "premium"},
    {"role": "admin"},
    {"year": 2023},
    {"status": "paid", "currency": "EUR"},
)
HELDOUT_FILTERS = ({"team": "sales"}, {"status": "late", "region": "north"}, {"level": 3})
DATABASE = _tool(
    "query_database",
    "Read rows from a database table.",
    {
        "table": {"type": "string", "description": "Table name"},
        "filters": {"type": "object", "description": "Column values the rows must match"},
        "limit": {"type": "integer", "description": "Maximum number of rows"},
    },
    ["table"],
)

LANGUAGES = ("French", "German", "Spanish", "Italian", "Japanese", "Portuguese")
PHRASES = (
    "good morning",
    "where is the station",
    "thank you very much",
    "the meeting is at noon",
    "I would like a coffee",
    "see you tomorrow",
    "how much does it cost",
    "the train is late",
    "happy birthday",
    "close the window",
)
HELDOUT_PHRASES = ("the library opens at nine", "my phone is broken", "please call a taxi")
TRANSLATE = _tool(
    "translate_text",
    "Translate text into another language.",
    {
        "text": {"type": "string", "description": "Text to translate"},
        "target_language": {"type": "string", "enum": list(LANGUAGES), "description": "Language to translate into"},
    },
    ["text", "target_language"],
)

SYMBOLS = ("AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA", "META", "IBM", "ORCL", "INTC")
HELDOUT_SYMBOLS = ("AMD", "NFLX", "ADBE", "UBER")
STOCK = _tool(
    "get_stock_price",
    "Get the latest stock price for a ticker symbol.",
    {
        "symbol": {"type": "string", "description": "Ticker symbol"},
        "include_history": {"type": "boolean", "description": "Also return the last 30 days of prices"},
    },
    ["symbol"],
)

REPOS = (
    "acme/webapp",
    "psf/requests",
    "numpy/numpy",
    "torvalds/linux",
    "rust-lang/rust",
    "pallets/flask",
    "django/django",
    "nodejs/node",
)
HELDOUT_REPOS = ("tokio-rs/tokio", "vuejs/core", "golang/go")
ISSUE_TITLES = (
    "Crash on startup",
    "Typo in README",
    "Slow login page",
    "Memory leak in parser",
    "Add dark mode",
    "Broken link in docs",
    "Tests fail on Windows",
    "Support Python 3.13",
)
HELDOUT_ISSUE_TITLES = ("Timeout when uploading files", "Wrong default port", "Missing license header")
LABELS = (
    ("bug",),
    ("bug", "urgent"),
    ("docs",),
    ("enhancement",),
    ("enhancement", "good first issue"),
    ("performance",),
    ("windows", "ci"),
)
HELDOUT_LABELS = (("security",), ("bug", "regression"), ("help wanted",))
ISSUE = _tool(
    "create_issue",
    "Open an issue in a GitHub repository.",
    {
        "repo": {"type": "string", "description": "Repository as owner/name"},
        "title": {"type": "string", "description": "Issue title"},
        "labels": {"type": "array", "items": {"type": "string"}, "description": "Labels to add"},
    },
    ["repo", "title"],
)

PATHS = (
    "src/main.py",
    "README.md",
    "setup.cfg",
    "/etc/hosts",
    "docs/index.rst",
    "app/config.yaml",
    "tests/test_api.py",
    "Makefile",
    "lib/utils.js",
    "notes.txt",
)
HELDOUT_PATHS = ("scripts/deploy.sh", "data/schema.sql", "CHANGELOG.md", "web/app.css")
READ_FILE = _tool(
    "read_file",
    "Read a text file from the workspace.",
    {
        "path": {"type": "string", "description": "File path"},
        "max_lines": {"type": "integer", "description": "Maximum number of lines to return"},
    },
    ["path"],
)


def _ints(low: int, high: int, skip: tuple[int, ...] = ()) -> tuple[int, ...]:
    return tuple(value for value in range(low, high + 1) if value not in skip)


def _date(year: int) -> tuple[str, ...]:
    return tuple(f"{year}-{month:02d}-{day:02d}" for month in range(1, 13) for day in (3, 9, 14, 21, 27))


T = Template
TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        WEATHER,
        {
            "city": Slot("city", CITIES, HELDOUT_CITIES),
            "unit": Slot("unit", ("celsius", "fahrenheit"), ("celsius", "fahrenheit")),
        },
        (
            T("What's the weather in {city}?"),
            T("How warm is it in {city} right now, in {unit}?"),
            T("Tell me the current weather for {city}."),
            T("Is it raining in {city} today?"),
            T("Give me the temperature in {city} in {unit}."),
            T("I'm travelling to {city}; what is the weather like?"),
            T("weather {city} {unit}"),
        ),
        (T("Could you check the weather conditions in {city} using {unit}?"), T("Weather report for {city}, please.")),
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
        SEARCH,
        {"query": Slot("query", TOPICS, HELDOUT_TOPICS), "n": Slot("max_results", _ints(2, 10), (12, 15))},
        (
            T("Search the web for {query}."),
            T("Look up {query} online and give me {n} results."),
            T("Find {n} web pages about {query}."),
            T("Can you google {query}?"),
            T("Do a web search on {query}."),
            T("search online: {query}"),
        ),
        (T("I need {n} search results on {query}."), T("Please search the internet for {query}.")),
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
        CONVERT,
        {
            "amount": Slot("amount", (5, 12.5, 20, 45, 99.99, 100, 250, 1000, 1500, 75.25), (33, 640.5, 8.75)),
            "src": Slot("from_currency", CURRENCIES, HELDOUT_CURRENCIES),
            "dst": Slot("to_currency", CURRENCIES, HELDOUT_CURRENCIES),
        },
        (
            T("Convert {amount} {src} to {dst}."),
            T("How much is {amount} {src} in {dst}?"),
            T("What is {amount} {src} worth in {dst} today?"),
            T("Exchange {amount} {src} into {dst}."),
            T("{amount} {src} to {dst} please"),
        ),
        (T("If I have {amount} {src}, how many {dst} do I get?"), T("Currency conversion: {amount} {src} to {dst}.")),
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
        EMAIL,
        {"to": Slot("to", EMAILS, HELDOUT_EMAILS), "subject": Slot("subject", SUBJECTS, HELDOUT_SUBJECTS)},
        (
            T("Email {to} with the subject '{subject}'."),
            T("Send an urgent email to {to} about '{subject}'.", {"urgent": True}),
            T("Write to {to}, subject '{subject}', it is not urgent.", {"urgent": False}),
            T("Please mail {to} regarding '{subject}'."),
            T("Shoot a quick email to {to}: subject '{subject}', mark it urgent.", {"urgent": True}),
        ),
        (
            T("Drop {to} an email titled '{subject}'."),
            T("Send {to} a non-urgent email with subject '{subject}'.", {"urgent": False}),
        ),
        lambda args, rng: {"status": "sent", "message_id": f"msg-{rng.randint(1000, 9999)}"},
        lambda args, result: f"Done: the email to {args['to']} was sent ({result['message_id']}).",
    ),
    ToolSpec(
        EVENT,
        {
            "title": Slot("title", TITLES, HELDOUT_TITLES),
            "date": Slot("date", _date(2024), _date(2026)),
            "people": Slot("attendees", PEOPLE, HELDOUT_PEOPLE, _and_list),
        },
        (
            T("Schedule a meeting called '{title}' on {date}."),
            T("Put '{title}' on my calendar for {date} with {people}."),
            T("Create a calendar event '{title}' on {date} and invite {people}."),
            T("Book '{title}' for {date}."),
            T("Add '{title}' to my calendar on {date}."),
        ),
        (
            T("Set up an event named '{title}' on {date}, attendees {people}."),
            T("Please add the calendar entry '{title}' for {date}."),
        ),
        lambda args, rng: {"event_id": f"evt-{rng.randint(100, 999)}", "status": "created"},
        lambda args, result: f"The event '{args['title']}' is on your calendar for {args['date']}.",
    ),
    ToolSpec(
        THERMOSTAT,
        {
            "temp": Slot("temperature", TEMPERATURES, HELDOUT_TEMPERATURES),
            "mode": Slot("mode", ("heat", "cool", "auto"), ("auto",)),
        },
        (
            T("Set the thermostat to {temp} degrees."),
            T("Turn the heating on and set the thermostat to {temp}.", {"mode": "heat"}),
            T("Cool the house down to {temp} degrees with the thermostat.", {"mode": "cool"}),
            T("Put the thermostat on {mode} at {temp}."),
            T("thermostat {temp} {mode}"),
        ),
        (T("Adjust the thermostat to {temp} in {mode} mode."), T("I want the thermostat at {temp} degrees, please.")),
        lambda args, rng: {"temperature": args["temperature"], "mode": args.get("mode", "auto"), "ok": True},
        lambda args, result: f"The thermostat is now set to {result['temperature']} degrees in {result['mode']} mode.",
    ),
    ToolSpec(
        SHELL,
        {
            "command": Slot("command", COMMANDS, HELDOUT_COMMANDS),
            "timeout": Slot("timeout", (5, 10, 30, 60, 120), (45, 90)),
        },
        (
            T("Run `{command}` in the shell."),
            T("Execute the command `{command}` with a timeout of {timeout} seconds."),
            T("Please run {command} for me."),
            T("Open a terminal and run `{command}`."),
            T("run `{command}`, time limit {timeout} seconds"),
        ),
        (
            T("Can you execute `{command}` and show the output?"),
            T("Shell command to run: `{command}`, give it {timeout} seconds."),
        ),
        lambda args, rng: {"exit_code": 0, "stdout": f"ok ({rng.randint(1, 50)} lines)"},
        lambda args, result: f"`{args['command']}` finished with exit code {result['exit_code']}: {result['stdout']}.",
    ),
    ToolSpec(
        DATABASE,
        {
            "table": Slot("table", TABLES, HELDOUT_TABLES),
            "filters": Slot("filters", FILTERS, HELDOUT_FILTERS, _where),
            "limit": Slot("limit", (5, 10, 20, 50, 100), (25, 40)),
        },
        (
            T("Query the {table} table {filters}."),
            T("Get {limit} rows from the {table} table {filters}."),
            T("Select rows from the {table} table {filters}, limit {limit}."),
            T("Fetch the first {limit} records of the {table} table."),
            T("database: {table} {filters}"),
        ),
        (
            T("Look in the database table {table} for records {filters}."),
            T("From the {table} table, give me {limit} entries {filters}."),
        ),
        lambda args, rng: {"rows": rng.randint(0, 40), "table": args["table"]},
        lambda args, result: f"The query returned {result['rows']} rows from {result['table']}.",
    ),
    ToolSpec(
        TRANSLATE,
        {"text": Slot("text", PHRASES, HELDOUT_PHRASES), "lang": Slot("target_language", LANGUAGES, LANGUAGES)},
        (
            T("Translate '{text}' into {lang}."),
            T("How do you say '{text}' in {lang}?"),
            T("Give me the {lang} translation of '{text}'."),
            T("What is '{text}' in {lang}?"),
            T("translate to {lang}: '{text}'"),
        ),
        (T("Please render '{text}' in {lang}."), T("I need '{text}' translated to {lang}.")),
        lambda args, rng: {"translation": f"[{args['target_language']}] {args['text']}"},
        lambda args, result: f"In {args['target_language']}: {result['translation']}",
    ),
    ToolSpec(
        STOCK,
        {"symbol": Slot("symbol", SYMBOLS, HELDOUT_SYMBOLS)},
        (
            T("What is the stock price of {symbol}?"),
            T("Get me the current share price for {symbol}."),
            T("How is {symbol} trading today? Include the price history.", {"include_history": True}),
            T("Show the {symbol} stock price with history.", {"include_history": True}),
            T("Just the latest quote for {symbol}, no history.", {"include_history": False}),
            T("stock {symbol}"),
        ),
        (
            T("Check the market price of the {symbol} ticker."),
            T("Fetch the {symbol} share quote along with its price history.", {"include_history": True}),
        ),
        lambda args, rng: {"symbol": args["symbol"], "price": round(rng.uniform(10, 900), 2), "currency": "USD"},
        lambda args, result: f"{result['symbol']} is trading at {result['price']} {result['currency']}.",
    ),
    ToolSpec(
        ISSUE,
        {
            "repo": Slot("repo", REPOS, HELDOUT_REPOS),
            "title": Slot("title", ISSUE_TITLES, HELDOUT_ISSUE_TITLES),
            "labels": Slot("labels", LABELS, HELDOUT_LABELS, _and_list),
        },
        (
            T("Open an issue in {repo} titled '{title}'."),
            T("File a bug on {repo}: '{title}', labels {labels}."),
            T("Create a GitHub issue for {repo} called '{title}' with labels {labels}."),
            T("Report '{title}' as an issue in the {repo} repository."),
        ),
        (
            T("Please raise an issue on {repo} named '{title}' and tag it {labels}."),
            T("New issue in {repo}: '{title}'."),
        ),
        lambda args, rng: {"number": rng.randint(10, 5000), "state": "open"},
        lambda args, result: f"Opened issue #{result['number']} in {args['repo']}.",
    ),
    ToolSpec(
        READ_FILE,
        {"path": Slot("path", PATHS, HELDOUT_PATHS), "n": Slot("max_lines", (10, 20, 50, 100, 200), (30, 75))},
        (
            T("Show me the contents of {path}."),
            T("Read the first {n} lines of {path}."),
            T("Open the file {path}."),
            T("Print the file {path}, at most {n} lines."),
            T("cat {path}"),
        ),
        (T("What does the file {path} contain?"), T("Display the top {n} lines of the file {path}.")),
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


def tool_schemas() -> list[dict[str, Any]]:
    """Every tool's OpenAI-style schema, in a fixed order."""
    return [spec.schema for spec in TOOL_SPECS]


def fill_request(spec: ToolSpec, template: Template, rng: random.Random, heldout: bool) -> tuple[str, Arguments]:
    """Fill `template` from the slot values (held-out ones when `heldout`); return the text and the arguments.

    Arguments come out in the schema's parameter order, as a model writes them.
    """
    values: dict[str, str] = {}
    arguments: Arguments = dict(template.fixed)
    drawn: list[Any] = []
    for slot_name, slot in spec.slots.items():
        if "{" + slot_name + "}" not in template.text:
            continue
        pool = slot.heldout if heldout else slot.train
        # Slots sharing a pool (two currencies) get distinct values.
        value = rng.choice([value for value in pool if value not in drawn] or pool)
        drawn.append(value)
        values[slot_name] = slot.phrase(value)
        arguments[slot.parameter] = _copy(value)
    order = list(spec.schema["function"]["parameters"]["properties"])
    return template.text.format(**values), {name: arguments[name] for name in order if name in arguments}
