"""`reader.port = "kycsim://..."`: the simulator twin behind pyserial's URL mechanism, as loop:// is;
the real CardReader (pyserial, the GA 467 protocol) over the twin's real pty."""
from __future__ import annotations

import time

import pytest
import serial

from device.cardreader import protocol_kycsim
from device.cardreader.reader import CardReader
from device.cardreader.records import problem
from device.cardreader.simulator import FakeCard
from device.config import ReaderConfig
from device.errors import CardError

FAST = dict(timeout_s=0.25, retries=2, presence_debounce=1, reconnect_backoff_max_s=0.2)


@pytest.fixture(autouse=True)
def _stop_twins():
    yield
    protocol_kycsim.shutdown()


def _read(port: str):
    with CardReader(ReaderConfig(port=port, **FAST)) as r:
        return r.read_card()


def test_each_url_is_a_card_on_a_reader():
    c = _read("kycsim://resident")
    assert c.record.card_type == "resident" and problem(c.record, time.time()) is None
    c = _read("kycsim://permit_hmt?valid_to=20200101&seed=7")
    assert c.record.card_type == "permit_hmt" and problem(c.record, time.time()) == "card_expired"
    c = _read("kycsim://foreign?valid_to=long")
    assert c.record.card_type == "foreign" and c.record.valid_to is None
    with pytest.raises(CardError) as e:
        _read("kycsim://unsupported")
    assert e.value.reason == "unsupported_card_type"


def test_faults_from_the_url_and_the_same_twin_across_opens():
    with pytest.raises(CardError) as e:
        _read("kycsim://resident?faults=bad_checksumx*")
    assert e.value.reason == "card_read_failed"
    url = "kycsim://none"
    with CardReader(ReaderConfig(port=url, **FAST)) as r:
        assert r.card_present() is False
        protocol_kycsim.twin(url).insert(FakeCard.foreign())
        deadline = time.monotonic() + 5
        while not r.card_present() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.card_present() is True and r.read_card().record.card_type == "foreign"
    assert protocol_kycsim.twin(url).card is not None      # the same twin: state kept after close


def test_bad_urls_fail_clearly():
    with pytest.raises(serial.SerialException, match="unknown card type 'passport'"):
        serial.serial_for_url("kycsim://passport")
    with pytest.raises(serial.SerialException, match="unknown option"):
        serial.serial_for_url("kycsim://resident?colour=red")
