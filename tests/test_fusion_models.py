"""The fusion models beyond [CLS] (docs/method.md §11): FiLM-conditioned ALIGNN and token cross-attention.

Real JARVIS crystals with random text vectors and token states for the invariances; a dozen real MP crystals
with their published robocrys texts, encoded by the offline MiniLM, for the overfit.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED_DATA, overfit_mae, tiny_records
from test_models import knn_data, n_params, warmed
from torch_geometric.data import Batch, Data

from crys_pipeline.atom_features import cgcnn_feature_table
from crys_pipeline.models import build_model, encoder_settings
from crys_pipeline.models.fusion import TokenCrossAttention
from crys_pipeline.settings import ModelSettings

TEXT_DIM = 24
SMALL = ModelSettings(hidden_features=16, alignn_layers=1, gcn_layers=1, fusion_heads=4)
FUSED = ("crysmmnet_film", "crysmmnet_xattn")


@pytest.fixture(scope="module")
def atom_table() -> torch.Tensor:
    return torch.from_numpy(cgcnn_feature_table())


def with_text(graph: Data, gen: torch.Generator, n_tokens: int) -> Data:
    """`graph` with a random [CLS] vector and `n_tokens` random token states."""
    graph.text_emb = torch.randn(1, TEXT_DIM, generator=gen)
    graph.tokens = torch.randn(n_tokens, TEXT_DIM, generator=gen).half()
    graph.n_tokens = torch.tensor([n_tokens])
    return graph


@pytest.fixture(scope="module")
def crystals() -> list[Data]:
    """Five small real JARVIS crystals (2-6 atoms), each with its own number of tokens (3-11)."""
    gen = torch.Generator().manual_seed(0)
    recs = [r for r in tiny_records("jarvis") if r["natoms"] <= 6][:5]
    return [with_text(knn_data(r), gen, 3 + 2 * i) for i, r in enumerate(recs)]


def spread(model: torch.nn.Module) -> torch.nn.Module:
    """N(0, 0.2) noise on every parameter (FiLM's zero-initialised maps included), so crystals differ clearly."""
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def model_of(variant: str, atom_table: torch.Tensor, crystals: list[Data]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(variant, SMALL, atom_table=atom_table, text_dim=TEXT_DIM)
    return warmed(spread(model), Batch.from_data_list(crystals))


def test_padding_tokens_change_nothing() -> None:
    """Padded key columns, whatever they hold, leave the attended text and the real tokens' weights unchanged."""
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    attention = TokenCrossAttention(16, TEXT_DIM, 4).eval()
    h, crystal = torch.randn(7, 16, generator=gen), torch.tensor([0, 0, 0, 1, 1, 2, 2])
    tokens = torch.randn(3, 5, TEXT_DIM, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out, weights = attention(h, crystal, tokens, mask)
    padded = torch.cat([tokens, 100 * torch.randn(3, 4, TEXT_DIM, generator=gen)], dim=1)  # 4 more padding columns
    out2, weights2 = attention(h, crystal, padded, torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1))
    assert out.shape == (7, 16) and weights.shape == (7, 4, 5) and weights2.shape == (7, 4, 9)
    torch.testing.assert_close(out2, out, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights2[..., :5], weights, rtol=0, atol=1e-7)
    assert torch.all(weights2[..., 5:] == 0) and torch.all(weights[:3, :, 3:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(7, 4))  # each atom and head: a distribution over tokens


def test_a_crystal_without_tokens_attends_to_nothing() -> None:
    torch.manual_seed(0)
    attention = TokenCrossAttention(16, TEXT_DIM, 4)
    mask = torch.tensor([[True, True], [False, False]])
    out, weights = attention(torch.randn(3, 16), torch.tensor([0, 1, 1]), torch.randn(2, 2, TEXT_DIM), mask)
    out.sum().backward()
    assert torch.all(weights[1:] == 0) and torch.isfinite(out).all()
    torch.testing.assert_close(out[1:], attention.out.bias.expand(2, 16).detach())
    assert all(torch.isfinite(p.grad).all() for p in attention.parameters() if p.grad is not None)


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(ValueError, match="fusion_heads 3 must divide hidden_features 16"):
        TokenCrossAttention(16, TEXT_DIM, 3)


@pytest.mark.parametrize("variant", FUSED)
def test_shapes_and_batching_equivalence(variant: str, atom_table: torch.Tensor, crystals: list[Data]) -> None:
    """In eval mode a batch of crystals predicts what each predicts alone (a batch of two: the two alone)."""
    model = model_of(variant, atom_table, crystals)
    with torch.no_grad():
        together = model(Batch.from_data_list(crystals))
        alone = torch.cat([model(Batch.from_data_list([c])) for c in crystals])
        pair = model(Batch.from_data_list(crystals[1:3]))
    assert together.shape == (5,) and together.std() > 0.01
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(pair, alone[1:3], rtol=0, atol=1e-5)


def test_cross_attention_weights_cover_each_crystals_own_tokens(atom_table: torch.Tensor,
                                                                crystals: list[Data]) -> None:
    model = model_of("crysmmnet_xattn", atom_table, crystals)
    batch = Batch.from_data_list(crystals)
    with torch.no_grad():
        h, attended, weights, mask = model.graph_encoder.attend(batch)
    counts = torch.tensor([c.n_tokens.item() for c in crystals])
    assert h.shape == attended.shape == (batch.num_nodes, 16) and mask.sum(1).tolist() == counts.tolist()
    assert weights.shape == (batch.num_nodes, 4, int(counts.max()))
    own = counts[batch.batch]  # [N]: tokens of each atom's crystal
    beyond = torch.arange(weights.shape[-1])[None, :] >= own[:, None]
    assert torch.all(weights.permute(1, 0, 2)[:, beyond] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch.num_nodes, 4))


def permuted(graph: Data, gen: torch.Generator) -> Data:
    """The same crystal with its atoms and edges listed in a random order (text and tokens kept)."""
    perm = torch.randperm(graph.num_nodes, generator=gen)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(graph.num_nodes)
    order = torch.randperm(graph.edge_index.shape[1], generator=gen)
    return Data(z=graph.z[perm], edge_index=inverse[graph.edge_index][:, order], edge_vec=graph.edge_vec[order],
                num_nodes=graph.num_nodes, text_emb=graph.text_emb, tokens=graph.tokens, n_tokens=graph.n_tokens)


@pytest.mark.parametrize("variant", FUSED)
def test_atom_permutation_invariance(variant: str, atom_table: torch.Tensor, crystals: list[Data]) -> None:
    gen = torch.Generator().manual_seed(3)
    model = model_of(variant, atom_table, crystals)
    shuffled = [permuted(c, gen) for c in crystals]
    assert any(not torch.equal(a.z, b.z) for a, b in zip(crystals, shuffled, strict=True))
    with torch.no_grad():
        before, after = model(Batch.from_data_list(crystals)), model(Batch.from_data_list(shuffled))
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_film_starts_as_the_unconditioned_encoder(atom_table: torch.Tensor, crystals: list[Data]) -> None:
    """FiLM's per-layer maps are zero at initialisation: the first forward pass is ALIGNN's, whatever the text."""
    torch.manual_seed(0)
    model = build_model("crysmmnet_film", SMALL, atom_table=atom_table, text_dim=TEXT_DIM).eval()
    batch = Batch.from_data_list(crystals)
    with torch.no_grad():
        conditioned = model.graph_encoder(batch)
        plain = model.graph_encoder.encoder(batch)
    torch.testing.assert_close(conditioned, plain, rtol=0, atol=0)


def test_parameter_counts_at_paper_width(atom_table: torch.Tensor) -> None:
    """docs/method.md §11.3: CrysMMNet plus the FiLM maps, or plus the attention and the wider graph projection."""
    base = n_params(build_model("crysmmnet", atom_table=atom_table))
    film = build_model("crysmmnet_film", atom_table=atom_table)
    xattn = build_model("crysmmnet_xattn", atom_table=atom_table)
    assert n_params(film) - base == (768 * 64 + 64) + 8 * (64 * 4 * 256 + 4 * 256) == 581_696
    assert n_params(xattn) - base == 2 * 256 + 2 * 768 + 2 * (256 * 256 + 256) + 2 * (768 * 256 + 256) + 256 * 64
    assert n_params(film) == 4_690_753 and n_params(xattn) == 4_652_801
    assert encoder_settings(xattn)["heads"] == 4 and encoder_settings(film)["modulated_layers"] == 8


@pytest.fixture(scope="module")
def dozen_with_text() -> tuple[Batch, torch.Tensor]:
    """12 real MP crystals (4-12 atoms) with their published robocrys texts: MiniLM [CLS] vectors and token states."""
    from crys_pipeline import tokens
    from crys_pipeline.attention.tagging import SectionText
    from crys_pipeline.embed import TextEncoder
    from crys_pipeline.settings import EmbedSettings

    recs = [json.loads(line) for line in (SHARED_DATA / "robocrys_text_reference_mp.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r.get("lattice_mat") and r.get("formation_energy_per_atom") is not None
            and r["natoms"] <= 12][:12]
    encoder = TextEncoder(EmbedSettings(max_length=128, token_budget=4096, device="cpu"))
    texts = tokens.tokenize(encoder, [SectionText(r["material_id"], r["description"], 0) for r in recs])
    states = dict(tokens.encode(encoder, texts, "all"))
    cls, _, _ = encoder.encode([r["description"] for r in recs])
    graphs = []
    for i, rec in enumerate(recs):
        graph = knn_data(rec)
        graph.text_emb = torch.from_numpy(cls[i : i + 1])
        graph.tokens = torch.from_numpy(states[i]["states"])
        graph.n_tokens = torch.tensor([graph.tokens.shape[0]])
        graphs.append(graph)
    y = torch.tensor([r["formation_energy_per_atom"] for r in recs], dtype=torch.float32)
    return Batch.from_data_list(graphs), y


@pytest.mark.parametrize("variant", FUSED)
def test_overfits_a_dozen_real_crystals(variant: str, atom_table: torch.Tensor,
                                        dozen_with_text: tuple[Batch, torch.Tensor], one_thread: None) -> None:
    """150 Adam steps on 12 real crystals alone fit their formation energies (MAE below 15 % of the mean's)."""
    batch, y = dozen_with_text
    torch.manual_seed(0)
    settings = ModelSettings(hidden_features=32, alignn_layers=1, gcn_layers=1)
    fitted = overfit_mae(build_model(variant, settings, atom_table=atom_table, text_dim=384), batch, y, steps=150)
    baseline = (y - y.mean()).abs().mean().item()
    assert batch.num_graphs == 12 and baseline > 0.3
    assert fitted < 0.15 * baseline, (fitted, baseline)
