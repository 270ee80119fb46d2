"""Chat templates: a conversation turned into the one text a chat model was trained on, by the model's own template.

Beyond the book: the book's chapter 7 writes its Alpaca prompt by hand. A chat model ships its format as a
Jinja template (`tokenizer.chat_template` in a GGUF file, `chat_template` in tokenizer_config.json or a
chat_template.jinja file), ChatML for SmolLM2 and Qwen, header blocks for Llama 3. `render_chat` renders one
exactly as transformers' `apply_chat_template(messages, add_generation_prompt=True, tokenize=False)` does:
jinja2's sandboxed environment (a template from the Hub is untrusted code) with trim_blocks and
lstrip_blocks, the loopcontrols extension, and transformers' globals `raise_exception`, `strftime_now`,
`dict` and `namespace` and its `tojson` filter (no HTML escaping, unicode kept); the messages passed as
plain data, keys whose value is None dropped; `tools` and `documents` passed as None unless given.

    >>> template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    ...             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    >>> render_chat(template, [{"role": "user", "content": "Hi"}])
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

__all__ = ["render_chat", "compile_template"]

# A message's reasoning goes by several names; templates read reasoning_content (Qwen3) or thinking.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _raise_exception(message):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat templates want the JSON as it is.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` inside a template: builds a dict, offers no attribute to climb out through."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


@lru_cache(maxsize=16)
def compile_template(template: str):
    """The compiled jinja2 template, in the environment transformers renders chat templates in (cached, as a
    chat renders the same template every turn)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Namespace(jinja2.utils.Namespace):
        # Refuses underscore-prefixed attributes, which lead to Python's internals.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}")

    class Generation(jinja2.ext.Extension):
        # {% generation %}...{% endgeneration %} marks the assistant's text for transformers' assistant
        # masks; rendering, it is its body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(),
                       namespace=Namespace)
    return env.from_string(template)


def _plain(value):
    """`value` rebuilt from plain JSON types (dicts, lists, tuples, str, int, float, bool, None), anything else
    a placeholder naming its type, so a template sees no object with methods of its own."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _message(message) -> dict:
    if not isinstance(message, dict):
        raise TypeError(f"chat messages are dicts with 'role' and 'content', got {message!r}")
    message = {k: _plain(v) for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is not None:  # every name a template may read it under, as transformers passes it
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return message


def render_chat(template: str, messages, add_generation_prompt: bool = True, **variables) -> str:
    """The text of `messages` (dicts with "role" and "content") in the chat format `template` describes.

    add_generation_prompt: end with the header that opens the assistant's turn, so the model's next tokens
    are its answer. variables: what else the template reads, as transformers passes it: bos_token and
    eos_token (a tokenizer's `apply_chat_template` passes its own), date_string (Llama 3.1+), enable_thinking
    (Qwen3), tools, documents.
    """
    if not messages:
        raise ValueError("cannot render an empty conversation: give at least one message")
    variables = {"tools": None, "documents": None, **{k: _plain(v) for k, v in variables.items()}}
    return compile_template(template).render(messages=[_message(m) for m in messages],
                                             add_generation_prompt=add_generation_prompt, **variables)
