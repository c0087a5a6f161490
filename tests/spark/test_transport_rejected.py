"""Connection attempts the workers' gRPC servers refuse during a fit (a wrong job secret, a probe of another method)
are summed over the ranks into the master's result stats (``transport_rejected``, hence the bundle's metrics.json)."""
import grpc
import pytest

from datagen import make_features_table
from sparkdl.config import AveragingConfig, RunConfig, SharingConfig, TrainConfig, TransportConfig
from sparkdl.data.features import read_features
from sparkdl.launch.local import LocalLauncher
from sparkdl.model import build_head
from sparkdl.train.listeners import TrainingListener
from sparkdl.train.driver import ParameterAveragingTrainingMaster
from sparkdl.train.driver import SharedGradientTrainingMaster
from sparkdl.transport.base import Kind, UpdateMessage
from sparkdl.transport.grpc import METHOD, SECRET_KEY, GrpcTransport

pytestmark = pytest.mark.spark

DIM, CLASSES = 4, 3
MASTERS = {"averaging": ParameterAveragingTrainingMaster, "sharing": SharedGradientTrainingMaster}


@pytest.fixture(scope="module")
def features(spark, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("feat") / "features.parquet")
    make_features_table(spark, uri, n=0, dim=DIM, n_classes=CLASSES, seed=1, split_counts={"train": 24, "valid": 8})
    return read_features(spark, uri)[0]


@pytest.fixture
def addresses(monkeypatch):
    """Every worker server's address, in start order (rank order in a LocalLauncher)."""
    seen = []
    start = GrpcTransport.start

    def recording_start(self):
        seen.append(start(self))
        return seen[-1]

    monkeypatch.setattr(GrpcTransport, "start", recording_start)
    return seen


def _call(address: str, method: str, metadata) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        stream = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
        frame = UpdateMessage(Kind.UPDATE, 0, 0, 1, b"forged").to_bytes(0)
        try:
            list(stream(iter([frame]), metadata=metadata, timeout=10))
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


class _Intruder(TrainingListener):
    """On the first round: a stream to rank 0 with a guessed secret, a call to another method on rank 1."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.codes: list[grpc.StatusCode] = []

    def on_round(self, event) -> None:
        if not self.codes:
            self.codes.append(_call(self.addresses[0], METHOD, ((SECRET_KEY, "guessed"),)))
            self.codes.append(_call(self.addresses[1], "/sparkdl.Transport/Peek", ()))


@pytest.mark.parametrize("master", ["averaging", "sharing"])
def test_rejected_attempts_during_a_fit_are_in_the_result_stats(features, addresses, master):
    algorithm = AveragingConfig() if master == "averaging" else SharingConfig()
    cfg = TrainConfig(algorithm=algorithm, run=RunConfig(workers=2), epochs=1, batch_size_per_worker=4)
    intruder = _Intruder(addresses)
    master = MASTERS[master](cfg, launcher=LocalLauncher(TransportConfig(name="grpc")))
    result = master.fit(features, build_head(cfg.head, DIM, CLASSES, seed=0), CLASSES, listeners=[intruder])
    assert intruder.codes == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED]
    assert result.stats["transport_rejected"] == 2  # one on each rank, summed
    assert result.history[0].examples == 24  # the fit itself went on untouched
