"""Energy accounting: hook counts equal hand-computed MACs/SOPs on tiny nets; ANN vs FSVE reports on real presets."""

import pytest
import torch
from spikingjelly.activation_based import neuron
from torch import nn

from spklip.config import HsfeCfg
from spklip.model import create_model
from spklip.model.energy import E_AC_PJ, E_MAC_PJ, compare_markdown, estimate_energy
from spklip.model.hsfe import BranchConv
from spklip.model.layers import MatMul


class TinyNet(nn.Module):
    """conv on binary input (SOPs) -> ReLU -> linear on dense input (MACs) -> LIF -> linear on spikes (SOPs)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc1 = nn.Linear(48, 10)
        self.lif = neuron.IFNode(v_threshold=0.1)
        self.fc2 = nn.Linear(10, 4)
        self.mm = MatMul()

    def forward(self, x):
        h = self.fc1(torch.relu(self.conv(x)).flatten(1))
        s = self.lif(h)
        self.seen_spikes = s
        out = self.fc2(s)
        return self.mm(s.unsqueeze(1), s.unsqueeze(2))  + out.sum()  # [B,1,10] @ [B,10,1]


def test_counts_match_hand_computed_macs_and_sops():
    torch.manual_seed(0)
    net = TinyNet()
    x = (torch.rand(2, 2, 4, 4) < 0.25).float()
    rep = estimate_energy(net, x, name="tiny")
    rows = {r.name: r for r in rep.rows}
    conv_dense = 2 * (4 * 4) * 3 * (2 * 3 * 3)  # batch x positions x out ch x (in ch x 3 x 3)
    assert rows["conv"].dense_macs == conv_dense
    assert rows["conv"].spiking_input and rows["conv"].macs == 0
    assert rows["conv"].sops == pytest.approx(float(x.mean()) * conv_dense)
    assert not rows["fc1"].spiking_input and rows["fc1"].macs == 2 * 48 * 10
    rate = float(net.seen_spikes.mean())
    assert 0 < rate < 1
    assert rows["fc2"].spiking_input and rows["fc2"].sops == pytest.approx(rate * 2 * 10 * 4)
    assert rows["mm"].sops == pytest.approx(rate * 2 * 1 * 10)
    want_pj = E_MAC_PJ * 2 * 48 * 10 + E_AC_PJ * (float(x.mean()) * conv_dense + rate * (80 + 20))
    assert rep.energy_per_clip_mj == pytest.approx(want_pj / 2 * 1e-9)
    assert "| conv | spikes |" in rep.to_markdown() and rep.to_csv().startswith("name,kind")


def test_masked_mtf_conv_counts_only_real_taps():
    cfg = HsfeCfg(num_subblocks=1, radius=3, step=1, num_branches=3, channel_step=1, branch_hidden=2)
    conv = BranchConv(cfg)
    x = torch.ones(1, 7, 5, 5)  # all-ones "spikes": rate 1
    rep = estimate_energy(conv, x)
    taps = 2 * (7 + 5 + 3) * 9  # hidden x crop lengths x 3x3
    assert rep.rows[0].dense_macs == 25 * taps and rep.rows[0].sops == 25 * taps


def test_ann_and_fsve_reports_side_by_side():
    torch.manual_seed(0)
    x = (torch.rand(2, 32, 64, 64) < 0.1).to(torch.uint8)
    reports = [estimate_energy(create_model(n), x, name=n, batch_stats=True)
               for n in ("spklip-tiny", "spklip-tiny-full-snn")]
    ann, snn = reports
    first = ann.rows[0]
    assert first.name == "subblocks.hsfe.branch1" and first.spiking_input  # camera spikes feed the first layer
    assert first.firing_rate == pytest.approx(0.1, abs=0.01)
    assert ann.macs > ann.sops  # the ANN is dominated by dense MACs
    spike_fed = [r for r in snn.rows if r.spiking_input]
    assert len(spike_fed) > 0.8 * len(snn.rows)  # nearly every FSVE layer is fed by spikes
    assert all(0 <= r.firing_rate <= 1 for r in snn.rows)
    table = compare_markdown(reports)
    assert "spklip-tiny-full-snn" in table and "energy mJ/clip" in table
    assert set(ann.metrics()) >= {"energy_per_clip_mj", "gmac_per_clip", "gsop_per_clip"}


def test_cli_models_and_energy(tmp_path, capsys):
    import json

    import numpy as np

    from spklip.cli import main
    assert main(["models", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["spklip-paper"]["subblocks"] == "K=5 r=30 s=45" and listed["spklip-paper"]["input"] == "250x240x320"
    assert main(["energy", "--model", "spike-rate-mlp-tiny", "--model", "tfp-resnet-tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| tfp-resnet-tiny |" in out and (tmp_path / "energy-tfp-resnet-tiny.csv").exists()
    np.save(tmp_path / "bad.npy", np.zeros((2, 10, 64, 64), dtype=np.uint8))
    assert main(["energy", "--model", "tfp-resnet-tiny", "--spikes", str(tmp_path / "bad.npy")]) == 2
    assert "do not fit this model" in capsys.readouterr().err
