"""The light renderer (jinja2 + tokenizers) agrees with transformers' apply_chat_template and tokenizer."""

import json

import pytest

from tuiwiz.data.rendering import ModelText, length_stats
from tuiwiz.demo.build import ensure_demo_dataset, ensure_demo_model

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim }}<|eot_id|>"
    "{% endgeneration %}{% else %}{{ message['content'] | trim }}<|eot_id|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_NO_GENERATION = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What sound does the cow make?"},
    {"role": "assistant", "content": "The cow says moo."},
    {"role": "user", "content": "And the duck?"},
    {"role": "assistant", "content": "The duck says quack."},
]


@pytest.fixture
def demo():
    return ensure_demo_model()


@pytest.mark.parametrize("template", [None, LLAMA3, CHATML_NO_GENERATION])
def test_chat_rendering_matches_transformers(demo, tmp_path, template):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo)
    folder = demo
    if template is not None:
        tokenizer.chat_template = template
        tokenizer.save_pretrained(tmp_path)
        folder = tmp_path
    light = ModelText(folder)
    for add in (False, True):
        expected = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=add)
        assert "".join(t for t, _ in light.apply_chat_template(CONVERSATION, add_generation_prompt=add)) == expected
    if template != CHATML_NO_GENERATION:
        # The trained spans are exactly transformers' assistant mask.
        out = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        trained_ids = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
        rendered = light.render({"messages": CONVERSATION}, "messages")
        trained_text = "".join(t for t, trained in rendered.pieces if trained)
        assert tokenizer.decode(trained_ids) == trained_text


def test_alpaca_rendering_and_counts_match_the_trainer(demo):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo)
    light = ModelText(demo)
    record = {"instruction": "What color is the cow?", "input": "", "output": "The cow is brown.", "system": ""}
    rendered = light.render(record, "alpaca")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": record["instruction"]}],
                                           tokenize=False, add_generation_prompt=True)
    assert rendered.prompt == prompt
    assert [text for text, trained in rendered.pieces if trained] == ["The cow is brown.<|im_end|>\n"]
    assert light.count([rendered.text]) == [len(tokenizer(rendered.text, add_special_tokens=False).input_ids)]


def test_length_stats_on_demo_data(demo):
    from tuiwiz.data.datasets import load_dataset_file

    data = load_dataset_file(ensure_demo_dataset("alpaca"))
    stats = length_stats(data.records, data.format, ModelText(demo), max_length=24)
    assert stats.rows == len(data.records) == stats.sampled
    assert 0 < stats.p50 <= stats.p95 <= stats.max
    assert stats.truncated == sum(n > 24 for n in stats.lengths)
    assert stats.prompt_too_long < stats.rows


def test_no_tokenizer_json_is_a_user_error(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    from tuiwiz.errors import UserError

    with pytest.raises(UserError, match=r"no tokenizer\.json"):
        ModelText(tmp_path).count(["hello"])
