"""Varied texts that exercise tokenization and numerics (export checks, tests)."""

_PASSAGE = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed La dame de fer, it was constructed as the centrepiece "
    "of the 1889 World's Fair, and to crown the centennial anniversary of the French Revolution. "
)

VARIED_TEXTS = [
    "what is the capital of france",
    "how do vaccines train the immune system",
    "python list comprehension vs generator expression",
    "",
    " ",
    "\t\n  \n",
    "a",
    "Crème brûlée, naïve café, São Paulo, Zürich, Ærøskøbing",
    "東京は日本の首都です。北京是中国的首都。",
    "القاهرة هي عاصمة مصر",
    "Москва — столица России",
    "I love pizza 🍕🔥 and 👩‍💻 coding! ✨",
    "def f(x):\n    return {k: v for k, v in x.items() if v is not None}  # comment",
    "<html><body><h1 class=\"title\">Hello &amp; welcome</h1><p>Text</p></body></html>",
    "SELECT id, name FROM users WHERE email LIKE '%@example.com' ORDER BY id;",
    "ALL CAPS SHOUTING ABOUT THE STOCK MARKET CRASH OF 1929!!!",
    "e = mc^2, ∑ x_i² ≤ ∞, π ≈ 3.14159",
    "word " * 40,
    _PASSAGE,
    _PASSAGE * 8,  # well over 512 tokens: truncated
]
