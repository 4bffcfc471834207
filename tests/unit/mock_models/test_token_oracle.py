from kv_canary_contract.token_oracle import TokenOracle


def test_incremental_state_matches_recomputing_from_scratch():
    oracle = TokenOracle(seed=3, vocab_size=97)
    sequence = [5, 17, 0, 96, 42]
    state = oracle.initial_state()
    for length, token in enumerate(sequence, start=1):
        state = state.advance(token)
        assert oracle.sample(state) == oracle.next_token(sequence[:length])


def test_the_next_token_depends_on_the_whole_sequence_and_the_seed():
    oracle = TokenOracle(seed=3, vocab_size=1 << 20)
    assert oracle.next_token([1, 2, 3]) != oracle.next_token([9, 2, 3])
    assert oracle.next_token([1, 2, 3]) != TokenOracle(seed=4, vocab_size=1 << 20).next_token([1, 2, 3])


def test_continuation_stays_inside_the_vocabulary_and_is_reproducible():
    oracle = TokenOracle(seed=0, vocab_size=50)
    tokens = oracle.continuation([1, 2], 200)
    assert len(tokens) == 200 and all(0 <= token < 50 for token in tokens)
    assert tokens == TokenOracle(seed=0, vocab_size=50).continuation([1, 2], 200)
    assert len(set(tokens)) > 30  # not stuck on a few tokens
