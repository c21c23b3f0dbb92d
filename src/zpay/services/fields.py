"""The documented maximum of every string the API takes, enforced at the edge (msgspec
`Meta`, so it shows in the OpenAPI document) identically on every database. Each maximum
fits the column the value is stored in; docs/errors.md and docs/concepts.md list them."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

Id = Annotated[str, Meta(max_length=40)]  # every zpay id (`agt_…`, `skey_…`, …)
Name = Annotated[str, Meta(max_length=200)]
Description = Annotated[str, Meta(max_length=500)]
Address = Annotated[str, Meta(max_length=100)]  # a wallet or contract address of any chain
Amount = Annotated[str, Meta(max_length=100)]  # a decimal string in token units
Symbol = Annotated[str, Meta(max_length=16)]  # a token symbol
ChainName = Annotated[str, Meta(max_length=40)]  # a registry network name
Method = Annotated[str, Meta(max_length=24)]  # an approval or payment method
Timezone = Annotated[str, Meta(max_length=64)]
WindowModeName = Annotated[str, Meta(max_length=16)]
Url = Annotated[str, Meta(max_length=2000)]
EventType = Annotated[str, Meta(max_length=64)]
Signature = Annotated[str, Meta(max_length=1024)]  # a hex or base58 signature
SignedTransaction = Annotated[str, Meta(max_length=16384)]  # base64 or 0x-hex bytes

# Lists
Recipients = Annotated[list[Address], Meta(max_length=100)]
ChainNames = Annotated[list[ChainName], Meta(max_length=50)]
Methods = Annotated[list[Method], Meta(max_length=20)]
EventTypes = Annotated[list[EventType], Meta(max_length=100)]
