from zpay.domain import tokens


def test_generated_tokens_carry_prefix_and_valid_checksum() -> None:
    for kind in tokens.KINDS:
        token = tokens.generate(kind, "test")
        assert token.startswith(f"{kind}_test_")
        assert tokens.parse_kind(token) == kind
        assert tokens.hint(token).endswith(token[-4:])


def test_malformed_tokens_are_refused_without_lookup() -> None:
    good = tokens.generate("sk", "test")
    flipped = good[:-1] + ("A" if good[-1] != "A" else "B")
    body_changed = good[:10] + ("x" if good[10] != "x" else "y") + good[11:]
    for bad in (flipped, body_changed, good[:-1], good + "a", "sk_prod_" + good[8:],
                "pk_test_" + good[8:], "", "sk_test_", good.replace("_", "-")):
        assert tokens.parse_kind(bad) is None, bad


def test_only_a_hash_is_kept() -> None:
    token = tokens.generate("agent", "live")
    digest = tokens.token_hash(token)
    assert len(digest) == 64 and token not in digest
