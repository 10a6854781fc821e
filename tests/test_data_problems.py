"""Every problem in a dataset with its line (find_problems), and the Data screen's Problems view listing them;
the runner's path (load_dataset_file) still stops at the first (for every corpus file: tests/test_corpus.py)."""

from __future__ import annotations

import json

import pytest

from tuiwiz.data.datasets import find_problems, load_dataset_file
from tuiwiz.errors import UserError

from .support.testing import SIZE, app_at, on, prepared_state, wait_for, widget_text

GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
BAD_ROLE = json.dumps({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "ok"}]})
NO_MESSAGES = json.dumps({"text_only": "where are the messages?"})


def three_bad_lines(path):
    """Good lines around three bad ones of different kinds: lines 3 (not JSON), 5 (no messages), 6 (a role)."""
    path.write_text("\n".join([GOOD, GOOD, '{"messages": [', GOOD, NO_MESSAGES, BAD_ROLE, GOOD]) + "\n",
                    encoding="utf-8")
    return path


def test_find_problems_lists_each_bad_line(tmp_path):
    data = three_bad_lines(tmp_path / "chat.jsonl")
    found = find_problems(data)
    assert found.total == 3 and found.more == 0
    assert [p.line for p in found.problems] == [3, 5, 6]
    assert all(p.file == str(data) for p in found.problems)
    syntax, missing, role = found.problems
    assert syntax.message.startswith("not valid JSON")
    assert "lacks messages" in missing.message and missing.field == "messages"
    assert "unknown role 'wizard'" in role.message and role.field == "messages[0].role"
    # the runner's path is unchanged: it raises the first, at its line
    with pytest.raises(UserError) as first:
        load_dataset_file(data)
    assert (first.value.line, first.value.message) == (3, syntax.message)


def test_find_problems_caps_what_it_keeps_and_counts_the_rest(tmp_path):
    data = tmp_path / "many.jsonl"
    lines = [GOOD if i % 3 != 1 else "not json" if i % 2 else NO_MESSAGES for i in range(300)]  # line 1 good
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad = [i + 1 for i, line in enumerate(lines) if line != GOOD]
    found = find_problems(data, cap=7)
    assert found.total == len(bad) == 100
    assert [p.line for p in found.problems] == bad[:7]  # the first by line, both kinds merged
    assert found.more == 93


def test_find_problems_reports_a_whole_file_problem_once(tmp_path):
    data = tmp_path / "broken.json"
    data.write_text('[{"instruction": "a", "output": "b"},\n{"instruction": oops}]', encoding="utf-8")
    found = find_problems(data)
    assert found.total == 1 and found.problems[0].line == 2  # a broken array: nothing after it is trusted
    assert find_problems(tmp_path / "missing.jsonl").problems[0].message == "no such dataset file"
    clean = tmp_path / "clean.jsonl"
    clean.write_text(GOOD + "\n", encoding="utf-8")
    assert find_problems(clean).total == 0


@pytest.mark.asyncio
async def test_data_screen_lists_every_bad_line(ui_env):
    data = three_bad_lines(ui_env / "chat.jsonl")
    state = prepared_state(ui_env, until="data")
    state.data_path = str(data)
    app = app_at(state, "data")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "DataScreen") and app.screen.checked is not None)
        await wait_for(pilot, lambda: app.screen.query_one("#data-tabs").active == "tab-problems")
        shown = widget_text(app.screen.query_one("#data-problems"))
        for where in ("chat.jsonl:3", "chat.jsonl:5: messages", "chat.jsonl:6: messages[0].role"):
            assert where in shown, shown
        assert "not valid JSON" in shown and "lacks messages" in shown and "unknown role 'wizard'" in shown
        label = str(app.screen.query_one("#data-tabs").get_tab("tab-problems").label)
        assert label == "Problems (3)"
        assert not app.screen.ready()
