"""The one typed configuration of a run.

Every knob of every stage lives here with its default; `params/*.yaml` files are
flat deltas over these defaults, merged in order (the papermill `-f` semantics).
An unknown key is an error naming the key, because papermill itself only warns
and a misspelled ablation knob would otherwise silently run the baseline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A params file or override that cannot become a valid config."""


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # ---- run -------------------------------------------------------------
    run_name: str = "default"
    outputs_dir: str = "outputs"
    cache_dir: str = "~/.cache/mrrec"
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0  # 0: leave torch's default

    # ---- data (stage 01) ------------------------------------------------------
    sources: list[str] = ["amazon2023_multicat", "agenticshop", "amazon2023_reviews"]
    shared_data_dir: str = "../shared/data"
    agenticshop_files: list[str] = ["agenticshop/Grocery_and_Gourmet_Food.json"]
    amazon2023_reviews_files: list[str] = ["amazon2023_beauty/test.jsonl"]
    amazon2023_reviews_category: str = "All_Beauty"  # Amazon 2023 file-category names, as every source uses
    amazon2023_multicat_files: list[str] = [
        "amazon2023_multicat/training.jsonl",
        "amazon2023_multicat/validation.jsonl",
        "amazon2023_multicat/test.jsonl",
    ]
    amazon2023_titles_files: list[str] = [
        "amazon2023_beauty/inst_test.parquet",
        "amazon2023_beauty/inst_val.parquet",
    ]
    amazon_c4_repo: str = "McAuley-Lab/Amazon-C4"
    amazon_reviews_repo: str = "McAuley-Lab/Amazon-Reviews-2023"
    amazon_c4_queries_path: str = ""  # local override of test.csv / test.json
    amazon_c4_items_path: str = ""  # local override of sampled_item_metadata_1M.jsonl
    amazon_reviews_dir: str = ""  # local dir with <Category>.jsonl and meta_<Category>.jsonl
    amazon_c4_categories: list[str] = []  # empty: every category present
    max_users: int = 0  # 0: all users
    max_queries: int = 0  # 0: all queries
    min_history: int = 1  # Amazon-C4-style: a request at a review with at least one earlier review
    min_target_rating: float = 5.0  # Amazon-C4 wrote requests from 5-star reviews
    extra_queries_per_user: int = 2
    split_ratios: list[float] = [0.6, 0.2, 0.2]  # used when split_test_queries/split_val_queries are 0
    split_test_queries: int = 800  # users drawn whole into test until it holds this many requests (0: split_ratios)
    split_val_queries: int = 100  # then into val until this many; the rest train
    query_builder: Literal["shared", "extractive", "llm"] = "shared"
    shared_requests_files: list[str] = ["c4_style_requests/requests.jsonl"]  # query_builder shared: requests written from the review alone
    simplify_queries: bool = True
    review_trim_chars: int = 300
    amazon_reviews_categories: list[str] = []  # Amazon 2023 files for C4 histories (e.g. All_Beauty); empty: every local one
    item_text_max_reviews: int = 3  # reviews appended to an item's text when it has no metadata (Beauty)
    item_text_max_chars: int = 1000  # cap of an item's retrieval text
    min_target_review_chars: int = 20  # extra queries need a review with this much text to write a request from
    leakage_min_words: int = 8  # a target review leaks when its first N words appear elsewhere (shorter: exact match)
    pool_distractors: bool = True  # add the real distractor catalogs to the item pool (deduplicated by normalised title)
    pool_distractor_files: list[str] = [
        "distractor_catalogs/instacart_products.parquet",
        "distractor_catalogs/movielens25m_movies.parquet",
        "distractor_catalogs/amazon2018_video_games.parquet",
        "distractor_catalogs/amazon2018_toys.parquet",
        "distractor_catalogs/amazon2018_industrial_office.parquet",
        "distractor_catalogs/amazon2018_scientific.parquet",
    ]
    pool_distractor_sample: int = 0  # 0: every distractor; N: a seeded sample of N (smoke params)
    c4_pairs_file: str = "amazon_c4_pairs/c4_review_query_pairs.parquet"  # real review->request pairs the builders are measured against
    request_quality_sample: int = 300  # notebook 01: seeded sample of real C4 test pairs the extractive builder is scored on

    # ---- auxiliary LLM (memory building, query writing, zero-shot baselines) --
    llm_backend: Literal["local", "openai"] = "local"
    llm_model: str = "smollm2-135m-instruct"
    llm_base_url: str = ""
    llm_api_key_env: str = "OPENAI_API_KEY"
    llm_batch_size: int = 8
    llm_max_new_tokens: int = 256
    llm_temperature: float = 0.0
    llm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    llm_request_timeout: float = 120.0
    llm_max_retries: int = 5  # HTTP backend: retries on 429/5xx/timeouts, exponential backoff
    llm_cache: bool = True  # on-disk response cache (cache_dir/llm_cache.sqlite): reruns cost nothing
    llm_chat_template: str = ""  # "": model's own if it renders tools, else TRL's qwen2_5; or a TRL name / .jinja path

    # ---- retrieval ----------------------------------------------------------------
    encoder_model: str = "all-MiniLM-L6-v2"
    encoder_query_instruction: str = ""
    encoder_batch_size: int = 64
    encoder_max_length: int = 256
    item_retriever: Literal["dense", "bm25"] = "dense"
    index_type: Literal["flat", "ivf", "hnsw"] = "flat"
    ivf_nlist: int = 1024  # 1M pool: built in 60 CPU-s; 4096 lists had not finished after ~400 CPU-s (docs/results.md)
    ivf_nprobe: int = 16  # recall@1000 0.995 on the synthetic 1M benchmark
    hnsw_m: int = 32
    hnsw_ef_search: int = 256
    hnsw_ef_construction: int = 80  # build-time beam width: recall vs. build time (benchmarks/bench_retrieval.py)
    index_use_gpu: bool = False

    # ---- memory (stage 02) ------------------------------------------------------------
    memory_builder: Literal["extractive", "llm"] = "extractive"
    memory_retriever: Literal["dense", "bm25"] = "dense"
    local_memory: bool = True
    global_memory: bool = True
    memory_levels: list[str] = ["record", "pattern", "profile"]
    memory_top_k: int = 3
    memory_chunk_chars: int = 240
    global_num_negatives: int = 5
    global_queries_per_category: int = 50
    global_top_k: int = 6
    memory_pattern_group: Literal["subcategory", "category"] = "subcategory"  # one preference pattern per this
    memory_prompt_max_records: int = 20  # llm builder: most recent records per pattern prompt (0: all)
    global_max_descriptions: int = 6  # descriptions kept per merged aspect
    global_merge_max_lines: int = 120  # aspect lines given to the LLM merge step (context limit)
    memory_llm_probe_snapshots: int = 3  # notebook 02: time the llm builder on this many snapshots (0: skip)
    price_per_m_input_tokens: float = 0.15  # GPT-4o-mini, the paper's memory LLM
    price_per_m_output_tokens: float = 0.60

    # ---- policy rollout and reward ------------------------------------------------
    policy_model: str = "smollm2-135m-instruct"
    policy_uses_memory: bool = True
    policy_prompt: Literal["full", "compact"] = "full"  # instruction text of the recommendation prompt (policies, SFT/GRPO data, zero-shot rows): "compact" condenses the steps and advice (same tool, aspects, answer format) for a 135M policy; "full" is hash-neutral (stages.HASH_NEUTRAL_DEFAULTS)
    max_tool_calls: int = 3
    max_new_tokens_total: int = 768
    max_new_tokens_per_turn: int = 256
    rollout_temperature: float = 1.0
    rollout_top_p: float = 1.0
    rollout_batch_size: int = 8  # rollouts decoded together
    rollout_engine: Literal["kv", "generate"] = "kv"  # kv: continuous batching, KV cache kept across turns; generate: one HF generate() per turn (reference)
    rollout_chunk_size: int = 32  # rollouts handed to the engine (and logged, for resuming) at a time
    reward_format_weight: float = 0.1
    reward_retrieval_weight: float = 5.0
    reward_memory_weight: float = 0.1
    malformed_retrieval: Literal["zero", "raw_text"] = "zero"
    decode_no_repeat_ngram: int = 10  # greedy policy decoding (validation, eval, assistant): no self-generated n-gram twice; 0: off

    # ---- SFT warm-up (stage 03) -------------------------------------------------------
    sft_enabled: bool = True
    sft_teacher: Literal["scripted", "rejection", "llm"] = "scripted"
    sft_rejection_samples: int = 4
    sft_reward_threshold: float = 0.0
    sft_epochs: float = 2.0
    sft_max_steps: int = 36  # CPU default: 144 conversations (~1.2 epochs of the ~118 that fit), ~40 min; -1: sft_epochs
    sft_lr: float = 5e-4  # LoRA on a 135M model with few steps; paper-scale params set their own
    sft_batch_size: int = 1  # 1: no padding, so CPU attention stays memory-efficient on ~1.5k-token conversations
    sft_grad_accum: int = 4
    sft_max_length: int = 1536  # longer conversations are dropped (prompt+tools ~850 tokens, +~400 per memory call)
    sft_eval_queries: int = 16  # stage 03's before/after validation requests; 0: no validation pass
    sft_save_every: int = 50  # checkpoint interval in optimizer steps (resume after a kill)
    use_lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    # ---- GRPO (stage 04) --------------------------------------------------------------
    grpo_enabled: bool = True
    grpo_start: Literal["sft", "base"] = "sft"
    grpo_seed: int | None = None  # GRPO's sampling, data order and init; None: `seed`. Another value replicates RL alone on the same data, memory and SFT policy
    grpo_num_generations: int = 4
    grpo_batch_prompts: int = 1  # x G completions per step; CPU default (paper: 256)
    grpo_max_steps: int = 4  # CPU default: ~1.5 min per step on the KV engine + ~2 min per validation; params/eval/grpo_probe.yaml (20 steps x 8 rollouts) is the first recipe that moved the policy; paper: epochs
    grpo_epochs: float = 5.0
    grpo_lr: float = 5e-5  # LoRA, 4 CPU steps: 1e-5 changed no greedy validation answer; early stopping guards a bad step
    grpo_beta: float = 0.0
    grpo_epsilon: float = 0.2
    grpo_max_completion_length: int = 512  # model + tool-result tokens; fits 1-2 memory calls + answer (paper: 768)
    grpo_eval_every: int = 4
    grpo_eval_queries: int = 16  # 0: no validation (no early stopping, no before/after; the last step is published)
    grpo_patience: int = 1
    grpo_save_every: int = 4
    grpo_micro_batch: int = 2  # completions per device per forward/backward (memory); 0: the whole step at once
    grpo_loss_type: str = "dapo"  # TRL loss_type; "dapo" = token-mean over the batch, VeRL's default (the paper's)
    grpo_log_completions: bool = False  # TRL completion tables (parquet per logging step) under models/grpo
    gradient_checkpointing: bool = False  # GPU memory saver for big policies; off on CPU
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    bf16: bool = False
    accelerate_config: str = ""

    # ---- evaluation (stage 05) ----------------------------------------------------------
    eval_systems: list[str] = [
        "query_dense",
        "query_bm25",
        "zeroshot_none",
        "zeroshot_naive",
        "zeroshot_static",
        "template_recr1",  # reference row: Rec-R1's scripted SFT teacher (request + category), no LLM
        "recr1",
        "template_mrrec",  # reference row: MR.Rec's scripted SFT teacher on the same memory, no LLM
        "mrrec_sft",
        "mrrec",
    ]
    eval_split: Literal["val", "test"] = "test"
    eval_max_queries: int = 0
    eval_ks: list[int] = [10, 100, 1000]
    naive_memory_n: int = 10
    bootstrap_samples: int = 2000
    case_study_n: int = 3
    eval_reference_system: str = "mrrec"  # paired tests: this system vs every other evaluated system
    eval_malformed: Literal["zero", "raw_text"] = "zero"  # every LLM row: unparseable output scores 0 (or is retrieved as raw text); the other rule is reported too
    eval_exclude_history: bool = True  # the headline setting: the user's earlier items are removed from the ranking; the other is reported too
    eval_table_categories: int = 3  # Table 1 shows the categories with the most evaluated queries
    eval_pool_fractions: list[float] = [0.0, 0.1, 0.25, 0.5, 1.0]  # pool-size curve: shares of the distractors in the pool; []: no curve
    eval_temperature: float = 0.0  # decoding of the evaluated policies and zero-shot LLMs (0: greedy, batch-independent)
    eval_recr1_run: str = ""  # run folder under outputs_dir holding models/recr1 (Rec-R1 trained by a delta run); "": this run
    eval_recr1_params: str = ""  # params delta that trains Rec-R1 into eval_recr1_run (stages 01-04) before stage 05; "": it must exist
    eval_models_run: str = ""  # run folder under outputs_dir whose trained policies stage 05 evaluates (and Rec-R1's when eval_recr1_run is ""); "": this run. Set by `mrrec evaluate`; such a run trains nothing

    # ---- ablations (stage 06) and assistant (stage 07) ----------------------------------
    ablation_summary: str = ""  # "": <outputs_dir>/ablations/summary.csv
    ablation_llm_judge: int = 0  # memory contribution: retrieved entries judged by the auxiliary LLM too (2 calls each); 0: keyword heuristic only
    assistant_user: str = ""
    assistant_request: str = ""
    assistant_k: int = 10

    def digest(self, keys: list[str] | None = None) -> str:
        """Content hash of (a subset of) the config, for stage-output caching."""
        data = self.model_dump()
        if keys is not None:
            data = {k: data[k] for k in sorted(keys)}
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


FIELDS = frozenset(Config.model_fields)


def changed_keys(before: Config, after: Config, keys: list[str]) -> dict[str, tuple[Any, Any]]:
    """Those of `keys` whose value differs between two configs, as {key: (before, after)}."""
    return {k: (getattr(before, k), getattr(after, k)) for k in keys if getattr(before, k) != getattr(after, k)}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a flat mapping of key: value, got {type(data).__name__}")
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"{path}: params must be flat (papermill merges shallowly); nested keys: {nested}")
    return data


def merge_params(paths: list[str | Path], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Shallow-merge params files left to right, then overrides; unknown keys are errors."""
    merged: dict[str, Any] = {}
    for p in paths:
        data = _read_yaml(Path(p))
        unknown = sorted(set(data) - FIELDS)
        if unknown:
            raise ConfigError(f"{p}: unknown config key(s) {unknown}; see mrrec_lib/config.py for valid keys")
        merged.update(data)
    for k, v in (overrides or {}).items():
        if k not in FIELDS:
            raise ConfigError(f"unknown config key {k!r} in overrides")
        merged[k] = v
    return merged


def load_config(*paths: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    merged = merge_params(list(paths), overrides)
    try:
        return Config(**merged)
    except ValidationError as e:
        raise ConfigError(f"invalid config from {[str(p) for p in paths]}: {e}") from e


def save_config(cfg: Config, path: str | Path) -> None:
    from mrrec_lib.runs import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.model_dump(), sort_keys=False))


def notebook_config(namespace: dict[str, Any]) -> Config:
    """Build the config inside a notebook from its parameters cell.

    The parameters cell defines `config_file` (a params YAML, usually the merged
    one the runner wrote into the run folder). papermill may additionally inject
    any config key directly (`papermill -f params/x.yaml` or `-p key value`);
    those names appear as notebook globals and override the file.
    """
    from mrrec_lib.runs import project_root

    config_file = namespace.get("config_file") or "params/default.yaml"
    path = Path(config_file)
    if not path.is_absolute():
        path = project_root() / path
    injected = {k: namespace[k] for k in FIELDS if k in namespace}
    if not injected.get("run_name"):
        injected.pop("run_name", None)  # the parameters cell's "" means: the config's run_name
    return load_config(path, overrides=injected)
