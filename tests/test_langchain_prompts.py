"""Every template in prompts/ loads as a LangChain PromptTemplate and renders exactly as docreader does."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from docreader.langchain.prompts import VARIABLES, chat_prompt, load_prompt, names
from docreader.prompt import template


def test_every_template_is_declared():
    assert names() and set(names()) == set(VARIABLES)


@pytest.mark.parametrize("name", sorted(VARIABLES))
def test_template_renders_with_its_declared_variables(name):
    prompt = load_prompt(name)
    assert set(prompt.input_variables) == VARIABLES[name]
    values = {v: f"<{v} value>" for v in VARIABLES[name]}
    text = prompt.format(**values)
    assert text == template(name).format(**values)  # what docreader itself sends
    for v in values.values():
        assert v in text
    if VARIABLES[name]:
        with pytest.raises(KeyError):
            prompt.format()


def test_chat_prompt_is_docreaders_first_turn():
    msgs = chat_prompt().format_messages(document_name="c.txt", document="THE TEXT", question="Why?")
    assert [type(m) for m in msgs] == [SystemMessage, HumanMessage]
    assert msgs[0].content == template("system")
    assert "THE TEXT" in msgs[1].content and "c.txt" in msgs[1].content and msgs[1].content.endswith("Why?")
