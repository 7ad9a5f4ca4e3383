"""Fixtures shared by several test files."""

import pytest

from tests.train_helpers import make_dataset


@pytest.fixture(scope="session")
def data_path(tmp_path_factory):
    """A tiny prepared dataset (tokenizer of 300 ids, ~200 documents) for the training tests."""
    return make_dataset(tmp_path_factory.mktemp("dataset"))
