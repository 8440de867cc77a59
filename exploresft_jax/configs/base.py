"""Base training configuration: every knob, documented. Method files override what they need.

Use: python scripts/train.py --config configs/oxa_tpu.py [--config.optim.lr=1e-5 ...]
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "sft"  # sft | oxa | curio | entropy_reg | dft  (grpo: configs/grpo_*.py)
    c.workdir = "runs/default"  # metrics.jsonl, tensorboard events, checkpoints/, config.json, hf_export/
    c.seed = 0  # parameter init (random models) and the data order

    # --- model -------------------------------------------------------------------------------------------
    c.model = ConfigDict()
    c.model.init = "hf"  # hf: load model.path (HuggingFace folder) | random: a fresh model of model.preset
    c.model.path = ""  # HuggingFace folder (config.json, *.safetensors, tokenizer files)
    c.model.preset = ""  # qwen2p5_math_1p5b | qwen2p5_math_7b | custom (sizes from model.custom) when init=random
    c.model.custom = ConfigDict(dict(vocab_size=0, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                                     num_kv_heads=2, head_dim=16, tie_word_embeddings=True))
    c.model.rope_theta = 0.0  # > 0 overrides the checkpoint's RoPE theta (the OXA release trains with 1e6)
    c.model.max_position_embeddings = 0  # > 0 overrides (the OXA release uses 40000)
    c.model.dtype = "bfloat16"  # compute dtype: bfloat16 | float32
    c.model.param_dtype = "float32"  # stored parameters and optimizer state (float32 master weights)
    c.model.remat_policy = "full"  # none | full | dots | dots_saveable
    # auto (splash on TPU, cuDNN / Pallas flash on GPU, blockwise elsewhere) | splash | cudnn | blockwise | dense
    c.model.attention = "auto"

    # --- tokenizer -----------------------------------------------------------------------------------------
    c.tokenizer = ConfigDict()
    c.tokenizer.path = ""  # default: model.path
    c.tokenizer.train_bpe_vocab = 0  # > 0: train an offline byte-level BPE of this size on the data (tiny runs)

    # --- data ----------------------------------------------------------------------------------------------
    c.data = ConfigDict()
    c.data.train_files = ()  # JSONL / JSON / Parquet files; see README "Data formats"
    c.data.format = "auto"  # auto | sft | alpaca | messages
    c.data.synthetic = ""  # '' or 'arithmetic': generate the toy verifiable task instead of reading files
    c.data.synthetic_size = 512  # records per loss type for data.synthetic
    c.data.synthetic_digits = 2  # operand digits of the synthetic additions
    c.data.synthetic_bug_rate = 0.0  # fraction of CE solutions that drop their carries (a flawed base corpus)
    c.data.max_length = 4096  # tokens per sequence (prompt + response)
    c.data.overlong = "drop"  # drop | truncate (drop is the release behaviour; counts are reported)
    c.data.max_prompt_length = 0  # > 0: drop examples whose prompt is longer (tokens; CurioSFT release: 1024)
    c.data.max_response_length = 0  # > 0: cut responses to this many tokens (CurioSFT release: 8192)
    c.data.chat_template = True  # render prompt/response with the tokenizer's chat template
    # The prompt's system turn: "" / "default" (the checkpoint template's own: Qwen2.5-Math's inserts "Please reason
    # step by step, ..." when none is given) | "none" (no system turn: the OXA release's qwen_no_sys) | a text
    c.data.system_prompt = ""
    c.data.prompt_suffix = ""  # appended to every prompt (and to a message list's last turn) unless already there
    # Several examples per row as segments (attention never crosses them; per-example means stay exact):
    #   none:     one example per row, padded to max_length (the releases' batches; most padding)
    #   examples: the same examples per step as 'none' (batch.global_size CE + batch.ul_size UL), packed
    #             first-fit-decreasing into as few rows as they need; CE and UL never share a row. Micro-batches
    #             of batch.rows_per_micro rows; the step's micro axis is batch.micro_batches, doubled as a step
    #             needs more rows (a few compiled shapes), and all-padding micro-batches are skipped
    #   tokens:   a fixed token budget: batch.global_size (+ ul_size) full rows per step, the number of examples
    #             varies (steps per epoch = packed rows / rows per step)
    # (False / True from older configs mean 'none' / 'tokens')
    c.data.packing = "none"
    c.data.num_workers = 0  # grain worker processes (0 = in-process)
    c.data.shuffle = True

    # --- batch -----------------------------------------------------------------------------------------------
    c.batch = ConfigDict()
    c.batch.global_size = 128  # sequences per optimizer step (for oxa: the CE sequences)
    c.batch.ul_size = 128  # oxa only: UL (negative) sequences per optimizer step, on top of global_size (0: CE only)
    c.batch.micro_batches = 1  # gradient accumulation steps inside one jitted step (lax.scan); see data.packing
    # rows (sequences of data.max_length) per micro-batch; 0 = the step's rows / micro_batches. Keep it a multiple
    # of the data-parallel devices (mesh data x fsdp), over which each micro-batch's rows are split. Free with
    # data.packing='examples' (e.g. 8 on a v5e-8 with micro_batches=8); otherwise x micro_batches = the rows.
    c.batch.rows_per_micro = 0

    # --- optimiser -----------------------------------------------------------------------------------------
    c.optim = ConfigDict()
    c.optim.lr = 1e-5
    c.optim.schedule = "cosine"  # cosine (linear warm-up, cosine decay) | constant (after warm-up)
    c.optim.warmup_ratio = 0.03  # fraction of total steps (ignored when warmup_steps > 0)
    c.optim.warmup_steps = 0
    c.optim.min_lr_ratio = 0.0  # cosine floor as a fraction of lr
    c.optim.cosine_horizon_factor = 1.0  # CurioSFT's release decays over 4x the run length
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1  # applied to matrices only (not norms, biases)
    c.optim.clip_norm = 1.0  # global-norm clipping; <= 0 disables
    c.optim.epochs = 1.0  # total steps = epochs * examples / global_size, unless num_steps > 0
    c.optim.num_steps = 0
    # Stop this invocation after this many steps (0 = run to the end), e.g. to fit a job's time limit; the next
    # invocation with the same workdir resumes from the checkpoint written at the stop.
    c.optim.max_steps_per_run = 0

    # --- losses ----------------------------------------------------------------------------------------------
    c.loss = ConfigDict()
    c.loss.chunk_size = 1024  # sequence positions per chunk of the memory-light head
    c.loss.vocab_chunk_size = 8192  # vocabulary rows per tile of the memory-light head
    # sft: token (mean over the step's counted tokens) | sample (each example's token mean, averaged over the
    # step's examples: OXA's CE term)
    c.loss.sft_normalization = "token"
    c.loss.oxa = ConfigDict(dict(ul_weight=1e-4, eps=1e-6, sample_weighting="none", weight_alpha=1.0))
    # curio.divergence: k2 (released: 0.5 (log pi(y) - log pi_tilde(y))^2 at the label) | forward_kl
    # (KL(pi_tilde || pi)) | reverse_kl (KL(pi || pi_tilde)), full vocabulary, per token
    c.loss.curio = ConfigDict(dict(coef=1.0, divergence="k2", teacher="lagged", sync_every=5, alpha=0.99,
                                   tau_min=1.1, tau_max=1.5, pivot=1.2, slope=2.0, max_increase=0.5, top_k=512,
                                   iters=20, floor=0.03, fixed_tau=0.0))
    c.loss.entropy_reg = ConfigDict(dict(coef=0.01, top_fraction=1.0))

    # --- GRPO (method=grpo; see configs/grpo_*.py) -----------------------------------------------------------
    c.grpo = ConfigDict()
    c.grpo.prompt_files = ()  # JSONL / Parquet with {"prompt": str | messages, "answer": str}
    c.grpo.prompts_per_step = 64  # P prompts per iteration
    c.grpo.group_size = 8  # G completions per prompt
    c.grpo.temperature = 0.85  # rollout temperature (the trainer scores softmax(z / T) too)
    c.grpo.top_p = 1.0
    c.grpo.top_k = 0
    c.grpo.max_prompt_length = 1024  # longer prompts are dropped
    c.grpo.max_new_tokens = 2048
    c.grpo.mini_batches = 1  # optimizer steps per iteration (over disjoint slices of the P*G rollouts)
    c.grpo.ppo_epochs = 1  # passes over the rollouts; > 1 (or mini_batches > 1) recomputes old log-probs
    c.grpo.clip_low = 0.2
    c.grpo.clip_high = 0.2  # > clip_low: DAPO's clip-higher
    # > 1 enables the dual clip for negative advantages (0: off). 3.0: verl's clip_ratio_c default, which the
    # releases' RLVR stage (verl 0.5.0, no override) runs with
    c.grpo.dual_clip = 3.0
    c.grpo.kl_coef = 0.001  # 0 disables the frozen reference model entirely
    c.grpo.kl_estimator = "k3"  # k1 | k2 | k3
    c.grpo.aggregation = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    # Policy-gradient term: ppo_clip (clip_low / clip_high / dual_clip above) | gspo (GSPO, Zheng et al. 2025: one
    # sequence-level ratio exp(mean_t log(pi / pi_old)) per response, clipped to [1 - gspo_clip_low,
    # 1 + gspo_clip_high]: the paper's ranges; the paper aggregates seq-mean-token-mean) | cispo (CISPO, MiniMax-M1:
    # -sg(clip(r, 1 - cispo_clip_low, 1 + cispo_clip_high)) * A * log pi; cispo_clip_low >= 1 removes the lower
    # bound, as MiniMax did; the weight cap 1 + 4 = 5 is TRL's recommended CISPO cap). dual_clip: ppo_clip only
    c.grpo.policy_loss = "ppo_clip"
    c.grpo.gspo_clip_low = 3e-4
    c.grpo.gspo_clip_high = 4e-4
    c.grpo.cispo_clip_low = 1.0
    c.grpo.cispo_clip_high = 4.0
    # Sampler/trainer mismatch correction (TRL / verl truncated or masked importance sampling) with the detached
    # ratio rho = exp(old_logp - sampler_logp) (old_logp: the trainer's own log-prob when on-policy), C = threshold:
    # none | token_truncate (weight min(rho, C)) | token_mask (rho, 0 where rho > C) | sequence_mask (the
    # sequence's product of rho, 0 where it exceeds C). The threshold is TRL's vllm_importance_sampling_cap default
    c.grpo.rollout_correction = "none"
    c.grpo.rollout_correction_threshold = 2.0
    # < 1: the policy-gradient term only on this fraction of response tokens with the highest entropy at the
    # rollout temperature (Wang et al. 2025, "Beyond the 80/20 rule": 0.2), chosen per micro-batch (micro_batches = 1
    # is the paper's per-batch rule); the loss denominators keep counting every response token, as in the paper
    c.grpo.entropy_token_fraction = 1.0
    c.grpo.advantage_scale = "group"  # group (z-score) | batch | none (Dr. GRPO)
    # grpo (group_relative, advantage_scale above) | passk (Pass@k Training, Chen et al. 2025: analytic advantages
    # that maximise the group's pass@passk_k; binary outcomes, reward >= 0.5 counts as correct; advantage_scale is
    # not used). passk_k must be <= group_size
    c.grpo.advantage_estimator = "grpo"
    c.grpo.passk_k = 4
    c.grpo.drop_zero_variance = False  # DAPO dynamic sampling: resample prompts to replace all-equal groups
    c.grpo.max_resample_rounds = 3
    c.grpo.overlong_filter = False  # exclude truncated completions from the loss
    # DAPO's soft overlong punishment added to the reward: 0 up to max_new_tokens - overlong_buffer tokens, then a
    # linear ramp to -overlong_penalty_factor at max_new_tokens. overlong_buffer 0: max_new_tokens // 4 (DAPO:
    # 4,096 of 20,480)
    c.grpo.overlong_penalty = False
    c.grpo.overlong_buffer = 0
    c.grpo.overlong_penalty_factor = 1.0
    c.grpo.require_think_close = False  # the answer must follow </think>
    c.grpo.reward_timeout = 5.0  # seconds per verification
    # boxed_only: the reward reads only the final \boxed{} (verl's math_dapo, the releases' RL reward: the
    # answer format is part of the task) | standard | permissive (the evaluation default)
    c.grpo.answer_extraction = "boxed_only"
    c.grpo.sample_log_every = 10  # write example completions every N iterations
    c.grpo.sampler_rows = 256  # decode rows per sampler batch (memory knob)
    c.grpo.sft_warmup_steps = 0  # random models only: SFT on the synthetic task's solutions first (toy runs)
    c.grpo.sft_warmup_lr = 3e-3  # the warm-up's peak learning rate (cosine; optim.* is GRPO's own)
    c.grpo.sft_warmup_bug_rate = 0.0  # fraction of warm-up solutions that drop carries (mistakes for RL to fix)
    c.grpo.lr = 0.0  # > 0: the GRPO learning rate, replacing optim.lr (one config can then serve SFT and RL)
    c.grpo.system_prompt = ""  # as data.system_prompt
    c.grpo.prompt_suffix = ""  # appended to every prompt (e.g. the boxed-answer instruction), message lists included

    # --- parallelism -----------------------------------------------------------------------------------------
    c.mesh = ConfigDict()
    c.mesh.shape = (1, -1, 1)  # (data, fsdp, tensor); -1 = the remaining devices
    c.distributed = ConfigDict()
    c.distributed.enabled = False  # True: jax.distributed.initialize (auto-detects TPU pods / SLURM)
    c.distributed.coordinator_address = ""  # host:port; also read from JAX_COORDINATOR_ADDRESS
    c.distributed.num_processes = 0
    c.distributed.process_id = -1

    # --- checkpoints and logging -----------------------------------------------------------------------------
    c.checkpoint = ConfigDict()
    c.checkpoint.every_steps = 200  # also saved at the end
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True
    c.checkpoint.export_hf = True  # write workdir/hf_export at the end
    c.checkpoint.export_dtype = "bfloat16"
    # --- stopping a run that went wrong ------------------------------------------------------------------------
    # A runaway loss stops the run with one line naming the step; nothing is saved after it, so the newest
    # checkpoint is the last good one. (SIGTERM, as spot / preemptible VMs and SLURM send before a kill, saves a
    # checkpoint at the next step boundary and exits 0: the same command resumes exactly.)
    c.guard = ConfigDict()
    c.guard.max_consecutive_skips = 5  # stop after this many optimizer steps in a row with a non-finite loss (0: off)
    # stop when |loss| > factor x the median |loss| of the last spike_window finite steps, once spike_min_history
    # were seen (0: off). SFT-family runs only: GRPO's loss is a signed surrogate centred near 0
    c.guard.loss_spike_factor = 10.0
    c.guard.spike_window = 50
    c.guard.spike_min_history = 20
    c.log = ConfigDict()
    c.log.every_steps = 10
    c.log.tensorboard = True
    c.log.plots = True  # PNG loss / entropy curves in workdir at the end
    c.log.peak_tflops = 0.0  # per device, for MFU; 0 = known accelerators auto-detected, else not reported
    return c


# The OXA release's instruction, appended to every query in its SFT data and its RL prompts (oxa.md 4.3).
OXA_PROMPT_SUFFIX = ("\nLet's reason step by step. Enclose the reasoning process within <think>...</think>, then "
                     "summarize it and present the final answer within \\boxed{} — for example: "
                     "<think>reasoning process here</think> \\boxed{answer here}.")


def one_gpu(c: ConfigDict, rows_per_micro: int = 2) -> ConfigDict:
    """Adapts a TPU-slice config to one GPU (an H200): a (1, 1, 1) mesh and the same global batch, accumulated in
    micro-batches of `rows_per_micro` sequences (rows of packed examples with data.packing='examples', whose
    micro axis then starts at a quarter of the unpacked count and doubles as a step needs)."""
    c.workdir = c.workdir.replace("runs/", "runs/gpu_")
    c.mesh.shape = (1, 1, 1)
    if c.method == "grpo":
        rows = c.grpo.prompts_per_step * c.grpo.group_size // c.grpo.mini_batches
        c.grpo.sampler_rows = min(c.grpo.sampler_rows, 256)
    else:
        rows = c.batch.global_size + (c.batch.ul_size if c.method == "oxa" else 0)
    if c.method != "grpo" and c.data.packing == "examples":
        c.batch.rows_per_micro = rows_per_micro
        c.batch.micro_batches = max(1, rows // rows_per_micro // 4)
    else:
        c.batch.micro_batches = rows // rows_per_micro
    return c
