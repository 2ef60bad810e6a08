"""The toy model's twelve tool schemas and the argument values requests draw from.

Each value list has a `HELDOUT_` twin the training data never uses, so the quality gate asks with argument values
the model has not seen.
"""

from __future__ import annotations

from qtools.chat.tools import function_tool

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
WEATHER = function_tool(
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
SEARCH = function_tool(
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
CONVERT = function_tool(
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
EMAIL = function_tool(
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
EVENT = function_tool(
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
THERMOSTAT = function_tool(
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
SHELL = function_tool(
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
DATABASE = function_tool(
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
TRANSLATE = function_tool(
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
STOCK = function_tool(
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
ISSUE = function_tool(
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
READ_FILE = function_tool(
    "read_file",
    "Read a text file from the workspace.",
    {
        "path": {"type": "string", "description": "File path"},
        "max_lines": {"type": "integer", "description": "Maximum number of lines to return"},
    },
    ["path"],
)


def ints(low: int, high: int, skip: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The integers low..high, without `skip`."""
    return tuple(value for value in range(low, high + 1) if value not in skip)


def dates(year: int) -> tuple[str, ...]:
    """Sixty ISO dates spread over `year`."""
    return tuple(f"{year}-{month:02d}-{day:02d}" for month in range(1, 13) for day in (3, 9, 14, 21, 27))
