"""Chat templates (tinygrad_llm/text/chat.py) rendered as transformers renders them: the published templates of
Llama 3.2 Instruct (header blocks) and Qwen2.5 Instruct (ChatML, with tools), written into tokenizer_config.json
and chat_template.jinja beside tiny tokenizers the tokenizers library trains, against transformers'
`PreTrainedTokenizerFast(tokenizer_file=...)` with the same template; and the sandbox's rules."""

import json

import pytest

from tests.test_llama_tokenizer import STYLES, train_style
from tinygrad_llm.text.chat import render_chat
from tinygrad_llm.text.hf_files import load_tokenizer

jinja2 = pytest.importorskip("jinja2")

# meta-llama/Llama-3.2-1B-Instruct's chat_template, as its tokenizer_config.json publishes it.
LLAMA_3_2_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Qwen/Qwen2.5-0.5B-Instruct's chat_template (ChatML, with tool calls).
QWEN_2_5_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "  Name a prime.\n"}],
    [{"role": "system", "content": "Answer in French. "}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "Quatre."}, {"role": "user", "content": "Et 3+3 ? <b>&</b> 東京"}],
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
TOOL_CHAT = [{"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": "", "tool_calls": [
                 {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
             {"role": "tool", "content": "18 C, sunny"}]
MODELS = {
    "llama3": dict(template=LLAMA_3_2_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                   eos_ids=["<|end_of_text|>", "<|eot_id|>"]),
    "qwen2": dict(template=QWEN_2_5_TEMPLATE, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                  eos_ids=["<|im_end|>", "<|endoftext|>"]),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model_dir(request, tmp_path_factory):
    """(style, a directory as a Hugging Face model has it: tokenizer.json, tokenizer_config.json with the
    published chat template and special tokens, generation_config.json with the eos ids; transformers'
    tokenizer of the same files)."""
    transformers = pytest.importorskip("transformers")
    style, spec = request.param, MODELS[request.param]
    directory = tmp_path_factory.mktemp(style)
    hf = train_style(style, directory)
    tokens = {k: spec.get(k) for k in ("bos_token", "eos_token", "pad_token")}
    config = {**tokens, "chat_template": spec["template"]}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [hf.token_to_id(t) for t in spec["eos_ids"]]}))
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"),
                                                  chat_template=spec["template"],
                                                  **{k: v for k, v in tokens.items() if v is not None})
    return style, directory, theirs


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_equals_transformers(model_dir, messages, add_generation_prompt):
    style, directory, theirs = model_dir
    ours = load_tokenizer(directory)
    date = {"date_string": "26 Jul 2024"} if style == "llama3" else {}
    text = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False, **date)
    expected = theirs.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                          **date)
    assert text == expected
    assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **date) == \
        theirs.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **date)["input_ids"]


def test_render_with_tools_equals_transformers(model_dir):
    style, directory, theirs = model_dir
    ours = load_tokenizer(directory)
    date = {"date_string": "26 Jul 2024"} if style == "llama3" else {}
    text = ours.apply_chat_template(TOOL_CHAT, tools=TOOLS, tokenize=False, **date)
    assert text == theirs.apply_chat_template(TOOL_CHAT, tools=TOOLS, add_generation_prompt=True, tokenize=False, **date)
    assert "get_weather" in text


def test_today_from_strftime_now(model_dir):
    """Llama 3.2's template writes today's date through strftime_now where no date_string is given."""
    style, directory, theirs = model_dir
    messages = CONVERSATIONS[0]
    assert load_tokenizer(directory).apply_chat_template(messages, tokenize=False) == \
        theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_the_directory_gives_tokens_and_stop_ids(model_dir):
    style, directory, _ = model_dir
    ours = load_tokenizer(directory)
    spec = MODELS[style]
    assert ours.chat_template == spec["template"]
    assert (ours.bos_token, ours.eos_token) == (spec["bos_token"], spec["eos_token"])
    assert ours.stop_ids == {ours.token_to_id(t) for t in spec["eos_ids"]}
    if style == "llama3":
        prompt = ours.apply_chat_template(CONVERSATIONS[0], date_string="26 Jul 2024")
        assert prompt[0] == ours.bos_token_id and prompt.count(ours.bos_token_id) == 1
        assert prompt[-4:] == ours.encode("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_chat_template_jinja_wins(tmp_path):
    train_style("qwen2", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "config", "eos_token": "<|im_end|>"}))
    assert load_tokenizer(tmp_path).chat_template == "config"
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    ours = load_tokenizer(tmp_path)
    assert ours.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"


def test_no_template(tmp_path):
    train_style("smollm2", tmp_path)
    with pytest.raises(ValueError, match="has no chat template"):
        load_tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "hi"}])
    assert STYLES["smollm2"]["specials"][0] == "<|endoftext|>"


# ---- the environment: transformers' globals and filters, and the sandbox -----------------------------

def test_tojson_keeps_html_and_unicode():
    assert render_chat("{{ messages[0] | tojson }}", [{"role": "user", "content": "<b>é</b>"}]) == \
        '{"role": "user", "content": "<b>é</b>"}'
    assert render_chat("{{ messages[0] | tojson(indent=2) }}", [{"role": "u", "content": "x"}]) == \
        '{\n  "role": "u",\n  "content": "x"\n}'


def test_raise_exception_and_none_fields():
    template = "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}{{ 'ok' }}"
    with pytest.raises(jinja2.exceptions.TemplateError, match="user first"):
        render_chat(template, [{"role": "assistant", "content": "x"}])
    # a key whose value is None is dropped, as transformers drops it
    assert render_chat("{{ 'tool_calls' in messages[0] }}", [{"role": "user", "content": "x", "tool_calls": None}]) \
        == "False"
    with pytest.raises(ValueError, match="empty conversation"):
        render_chat(template, [])


def test_trim_blocks_loopcontrols_and_generation():
    template = ("{% for m in messages %}\n  {% if loop.index > 1 %}{% break %}{% endif %}\n"
                "{% generation %}{{ m.content }}{% endgeneration %}\n{% endfor %}")
    # trim_blocks takes the newline after each block tag, lstrip_blocks the spaces before one
    assert render_chat(template, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a"


def test_sandbox_refuses_internals():
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": "x"}])
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat("{% set ns = namespace(_x=1) %}", [{"role": "user", "content": "x"}])
    with pytest.raises(jinja2.exceptions.SecurityError):  # immutable: the template cannot edit the messages
        render_chat("{{ messages.append(1) }}", [{"role": "user", "content": "x"}])
    assert render_chat("{% set ns = namespace(n=1) %}{% set ns.n = ns.n + 1 %}{{ ns.n }}{{ dict(a=1) }}",
                       [{"role": "user", "content": "x"}]) == "2{'a': 1}"
