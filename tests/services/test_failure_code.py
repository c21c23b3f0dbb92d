from zpay.chains.protocol import TransferState, TransferStatus
from zpay.services.payments import _failure_code


def test_failure_code_is_always_a_stable_code() -> None:
    prose = TransferStatus(TransferState.FAILED, error="the relayer transaction reverted")
    assert _failure_code("pay_1", prose) == "transfer_failed"
    own = TransferStatus(TransferState.FAILED, error="transfer_never_submitted")
    assert _failure_code("pay_1", own) == "transfer_never_submitted"
    assert _failure_code("pay_1", TransferStatus(TransferState.FAILED)) == "transfer_failed"
