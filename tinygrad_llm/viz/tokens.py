"""Book chapter 2, section 2.5 (byte pair encoding), to look at: a text cut into its tokens.

    spans = token_spans(tokenizer, "Hello, do you like tea?")
    [s.text for s in spans]    # ['Hello', ',', ' do', ' you', ' like', ' tea', '?']
    [s.ids for s in spans]     # [(15496,), (11,), (466,), (345,), (588,), (8887,), (30,)]
    print(color_tokens(spans))                  # alternating background colours in a terminal
    Path("tokens.html").write_text(tokens_html(spans, ids=True))
    tokens_figure(spans, ids=True)              # the same as a picture (matplotlib)

The spans' texts, joined, are the text again. A span is one token, except where a character's UTF-8
bytes are split between tokens (an emoji, a CJK character): those tokens form one span, since none of
them is a whole character alone.
"""

import html
from typing import NamedTuple

from autograd.viz import new_figure


class TokenSpan(NamedTuple):
    text: str  # the characters these tokens stand for
    ids: tuple  # one token id, or the several that share a character
    start: int  # where `text` starts in the whole text (characters)


def _token_bytes(tokenizer):
    """id -> the token's bytes, for tokenizers that expose them (ours, tiktoken's); else None."""
    if hasattr(tokenizer, "decode_bytes"):
        return lambda i: tokenizer.decode_bytes([i])
    if hasattr(tokenizer, "decode_single_token_bytes"):
        return tokenizer.decode_single_token_bytes
    return None


def token_spans(tokenizer, text=None, ids=None, **encode_options):
    """The spans of `text` (encoded with `encode_options`, e.g. allowed_special="all") or of `ids`."""
    if ids is None:
        ids = tokenizer.encode(text, **encode_options)
    ids = [int(i) for i in ids]
    as_bytes = _token_bytes(tokenizer)
    spans, start, pending, buffer = [], 0, [], b""
    for k, i in enumerate(ids):
        pending.append(i)
        if as_bytes is None:  # a tokenizer that only decodes text: the prefix's growth is this token
            piece = tokenizer.decode(ids[:k + 1])[start:]
            if piece.endswith("\ufffd") and k + 1 < len(ids):
                continue
        else:
            buffer += as_bytes(i)
            try:
                piece = buffer.decode("utf-8")
            except UnicodeDecodeError:  # a character split between tokens: wait for the rest of it
                if k + 1 < len(ids):
                    continue
                piece = buffer.decode("utf-8", errors="replace")
        spans.append(TokenSpan(piece, tuple(pending), start))
        start, pending, buffer = start + len(piece), [], b""
    return spans


def _subscript(n):
    return str(n).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))


# background colours, light enough for black text: 256-colour terminal codes and their RGB
PALETTE = [(153, "#afafff"), (229, "#ffffaf"), (157, "#afffaf"), (217, "#ffafaf"), (159, "#afffff")]


def color_tokens(spans, ids=False):
    """The text for a terminal, each span on its own background colour (alternating), with each span's
    ids as subscripts when `ids`. A newline shows as a return arrow and ends the colour, so the next line
    starts clean."""
    out = []
    for k, s in enumerate(spans):
        code = PALETTE[k % len(PALETTE)][0]
        tail = ",".join(_subscript(i) for i in s.ids) if ids else ""
        segments = s.text.replace("\n", "\u21b5\n").split("\n")  # a newline shown as a return arrow, then made
        last = max(n for n, seg in enumerate(segments) if seg or n == 0)
        for n, seg in enumerate(segments):
            if n:
                out.append("\n")
            shown = seg + (tail if n == last else "")
            if shown:
                out.append(f"\x1b[48;5;{code}m\x1b[30m{shown}\x1b[0m")
    return "".join(out)


def tokens_html(spans, ids=False, title="tokens"):
    """A standalone HTML page: the text with each span on an alternating colour, its ids in a tooltip
    and, when `ids`, as subscripts."""
    parts = []
    for k, s in enumerate(spans):
        colour = PALETTE[k % len(PALETTE)][1]
        sub = f"<sub>{' '.join(map(str, s.ids))}</sub>" if ids else ""
        parts.append(f'<span style="background:{colour}" title="ids {" ".join(map(str, s.ids))}">'
                     f"{html.escape(s.text)}{sub}</span>")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
            f'<body><p>{len(spans)} tokens</p>\n<pre style="white-space:pre-wrap;font-size:15px;line-height:1.9">'
            + "".join(parts) + "</pre></body></html>\n")


def tokens_figure(spans, ids=False, width=60, title=None):
    """The spans as a picture: boxes on alternating colours in lines of at most `width` characters (a
    space shown as a middle dot, a newline as a return arrow that starts a new line), each span's ids
    under it when `ids`. Each box's text is drawn as one matplotlib Text, in the order of the spans."""
    rows, row, col = [], [], 0  # each row: (column, text shown, span)
    for s in spans:
        segments = s.text.replace("\n", "\u21b5\n").split("\n")  # a newline: a return arrow, then a new line
        last = max(n for n, seg in enumerate(segments) if seg or n == 0)
        for n, line in enumerate(segments):
            if n:
                rows.append(row)
                row, col = [], 0
            shown = line.replace(" ", "\u00b7")  # a space shown as a middle dot: tokens carry their spaces
            label = " ".join(map(str, s.ids)) if ids and n == last else ""
            cells = max(len(shown), len(label) if ids else 0)
            if col and col + cells > width:
                rows.append(row)
                row, col = [], 0
            if shown or label:
                row.append((col, shown, label, cells, s))
                col += cells + (1 if ids else 0)
    rows.append(row)
    line_h = 2.0 if ids else 1.3
    char_w, inch = 0.11, 0.2  # inches per character across, per line unit down
    fig = new_figure(max(width * char_w, 3) + 0.3, len(rows) * line_h * inch + 0.3 + (0.3 if title else 0))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.5, width + 0.5)
    ax.set_ylim(len(rows) * line_h + 0.3 + (1.5 if title else 0), -0.4 - (1.5 if title else 0))
    ax.axis("off")
    from matplotlib.patches import Rectangle

    index = {id(s): k for k, s in enumerate(spans)}
    for r, items in enumerate(rows):
        y = r * line_h
        for col, shown, label, cells, s in items:
            colour = PALETTE[index[id(s)] % len(PALETTE)][1]
            ax.add_patch(Rectangle((col, y), cells, 1.1, facecolor=colour, edgecolor="none"))
            ax.text(col, y + 0.55, shown, family="monospace", fontsize=13, va="center", ha="left")
            if ids:
                ax.text(col, y + 1.5, label, family="monospace", fontsize=7, va="center", ha="left", color="#444444")
    if title:
        ax.text(0, -1.0, title, fontsize=10, va="center", ha="left")
    return fig
