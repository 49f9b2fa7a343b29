"""The sentence splitter that lets speech start before the reply is finished."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from processors.sentences import SentenceSplitter


def split(text: str, first_clause_words: int = 0, step: int = 0) -> list[str]:
    """Feed ``text`` whole (step 0) or ``step`` characters at a time; pieces + flush."""
    splitter = SentenceSplitter(first_clause_words)
    chunks = [text] if step == 0 else [text[i : i + step] for i in range(0, len(text), step)]
    pieces = [piece for chunk in chunks for piece in splitter.push(chunk)]
    return pieces + splitter.flush()


def test_sentences_are_cut_once_the_next_word_starts() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Hello there") == []
    assert splitter.push(".") == []  # "there.5" could still follow
    assert splitter.push(" How are") == ["Hello there."]
    assert splitter.push(" you?\n\nI am") == ["How are you?"]
    assert splitter.flush() == ["I am"]
    assert splitter.pieces == 3


def test_question_and_exclamation_marks_and_closing_quotes_end_sentences() -> None:
    text = 'Really?! He said "stop." Then he left… and came back.'
    assert split(text) == ["Really?!", 'He said "stop."', "Then he left…", "and came back."]


def test_abbreviations_initials_and_numbers_do_not_end_sentences() -> None:
    text = "Dr. Smith met J. R. Tolkien at 3.5 p.m. today. See e.g. page 4. Done"
    assert split(text) == [
        "Dr. Smith met J. R. Tolkien at 3.5 p.m. today.",
        "See e.g. page 4.",
        "Done",
    ]


def test_list_numbers_stay_with_their_item_and_lines_end_pieces() -> None:
    assert split("Two fruits:\n1. Apples\n2. Pears") == ["Two fruits:", "1. Apples", "2. Pears"]


def test_first_piece_ends_at_the_first_comma_semicolon_or_colon() -> None:
    text = "Sure, I can help with that, of course. Anything else, friend?"
    assert split(text, first_clause_words=6) == [
        "Sure,",
        "I can help with that, of course.",
        "Anything else, friend?",
    ]
    assert split("Note: it rains. Yes", first_clause_words=6)[0] == "Note:"
    assert split("Well; maybe. Yes", first_clause_words=6)[0] == "Well;"


def test_first_piece_ends_after_first_clause_words_words_at_a_word_boundary() -> None:
    text = "Once upon a time there was a dragon who lived in a cave. The end."
    assert split(text, first_clause_words=6) == [
        "Once upon a time there was",
        "a dragon who lived in a cave.",
        "The end.",
    ]
    splitter = SentenceSplitter(3)
    assert splitter.push("one two thr") == []  # "thr" may not be the whole word yet
    assert splitter.push("ee four") == ["one two three"]


def test_first_clause_words_zero_speaks_whole_sentences_only() -> None:
    text = "Sure, I can help with that, of course, any time you like. Bye"
    assert split(text, first_clause_words=0) == [
        "Sure, I can help with that, of course, any time you like.",
        "Bye",
    ]


def test_flush_returns_nothing_for_whitespace_and_resets() -> None:
    splitter = SentenceSplitter()
    splitter.push("  \n ")
    assert splitter.flush() == []
    splitter.push("Hi")
    assert splitter.flush() == ["Hi"]
    assert splitter.flush() == []


# Text made of words, punctuation and assorted whitespace (plus any character at all).
TOKENS = st.sampled_from(
    ["Hello", "world", "Dr.", "e.g.", "3.5", "1.", "J.", "ok", "...", "…", '"', "'", ")"]
    + [".", "!", "?", ",", ";", ":", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0"]
)
TEXT = st.lists(TOKENS | st.text(max_size=3), max_size=60).map("".join)


@given(text=TEXT, first=st.integers(0, 8), step=st.integers(0, 7))
def test_pieces_joined_give_back_the_input_modulo_whitespace(
    text: str, first: int, step: int
) -> None:
    pieces = split(text, first, step)
    assert "".join("".join(pieces).split()) == "".join(text.split())
    assert " ".join(pieces).split() == text.split()  # cut only between words


@given(text=TEXT, first=st.integers(0, 8), step=st.integers(0, 7))
def test_no_piece_is_empty_or_has_surrounding_whitespace(text: str, first: int, step: int) -> None:
    for piece in split(text, first, step):
        assert piece and piece == piece.strip()


@given(text=TEXT, first=st.integers(0, 8), step=st.integers(1, 7))
def test_pieces_do_not_depend_on_how_the_text_was_streamed(
    text: str, first: int, step: int
) -> None:
    assert split(text, first, step) == split(text, first)
