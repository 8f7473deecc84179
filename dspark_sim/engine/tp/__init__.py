"""Tensor parallelism for the engine (Megatron-style), over torch.distributed.

What is sharded, and how (per rank r of `tp`):
- attention: wq, wk, wv are column-parallel (this rank's heads), wo is row-parallel (its input columns)
  and is followed by one all-reduce; each rank attends with its own query heads and its own slice of
  the KV cache. KV heads are split over the ranks when tp divides them; when kv_heads < tp each KV head
  is replicated on tp / kv_heads ranks (as vLLM does), so tp must be a multiple of kv_heads.
- FFN: w1, w3 column-parallel, w2 row-parallel + one all-reduce. Two all-reduces per layer of
  T x hidden activations: exactly what `costmodel.forward_cost(..., tp)` prices.
- embedding: replicated (a lookup reads T rows, nothing to gain). lm head: vocab-parallel (each rank
  holds ceil(V / tp) rows, zero-padded), then an all-gather of the logits, so every rank ends a pass
  with the same, bitwise-identical logits. The cost model divides the head's weights by tp as this
  does; the logits all-gather (T x V per pass) is not in it (it is one collective against 2 x layers).
  A tied embedding is stored twice under TP: whole for the lookup, sharded for the head.

Identical decisions on every rank, with the unchanged generate loop (`generate.py`): the logits every
rank samples from are the all-gathered ones (identical by construction), and every rank passes an
identically seeded torch generator, so device-side sampling and acceptance agree; the host-side
speculation policy runs on rank 0 and its draft/verify lengths are broadcast (`LeaderPolicy`), because
some policies read wall-clock step times, which differ between ranks.

Loading: every rank builds (random weights, seeded) or loads (checkpoint) the full model, then keeps
its own shard (`shard_state_dict`, a pure function of the full weights, the rank and tp).

The modules, by job:
- `group`: the process group (torchrun's or our own), the collectives, host-side agreement;
- `workers`: starting the ranks as local processes when torchrun did not;
- `shard`: which slice of each full parameter a rank keeps (pure tensor maths);
- `layers`: the row- and vocab-parallel layers and a full model turned into one rank's shard;
- `loading`: where a model's full weights come from, and a rank's model built from them;
- `policy`: the speculation policy rank 0 decides for every rank;
- `generate`: one TP run (baseline + speculative), checked against the single-process engine.

Launch (`python -m dspark_sim.cli.tp --help`):
    torchrun --nproc-per-node 2 -m dspark_sim.cli.tp generate --device cuda --json
    python -m dspark_sim.cli.tp generate --tp 2            # starts its own 2 processes
    python -m dspark_sim.cli.tp allreduce --tp 2 -o allreduce.json [--hardware hw.yaml --hardware-out hw-tp.yaml]
NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends, `group.SAFE_ENV`) in every process started here.
"""
