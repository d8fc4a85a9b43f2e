import sys, time, json, os, subprocess
sys.path.insert(0, "src")
from pathlib import Path
OUT = Path(os.environ.get("OUT", "/tmp/out")); OUT.mkdir(parents=True, exist_ok=True)
W = Path("/tmp/dx"); W.mkdir(exist_ok=True)
def log(**kw):
    print(json.dumps(kw), flush=True)
    with open(OUT/"results.jsonl", "a") as f: f.write(json.dumps(kw)+"\n")
mode = sys.argv[1]
if mode == "main":
    import torch; torch.set_num_threads(2)
    from L07_learning.pipelines.base_model import default_base_model_dir
    t=time.time(); base = default_base_model_dir(W/"cache"); log(stage="convert", s=time.time()-t)
    from L07_learning.models.training_job import JobConfig
    from L07_learning.pipelines.sft_pipeline import run_sft
    from L07_learning.pipelines.distillation_pipeline import score_exact_match
    from L07_learning.tests.sft_factories import tool_rows
    train = tool_rows(96, seed=1); test = tool_rows(48, seed=2)
    t=time.time(); c=time.process_time()
    cfg = JobConfig(learning_rate=1e-3, batch_size=8, max_steps=24, epochs=1, lora_rank=8, lora_alpha=16,
                    max_seq_length=256, eval_strategy="no", save_strategy="no", gradient_checkpointing=False, warmup_ratio=0.1,
                    target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"])
    r = run_sft(base, train, [], cfg, W/"teacher", W/"ckpt", test_rows=None, measure_generation=False)
    log(stage="sft_teacher", wall=time.time()-t, cpu=time.process_time()-c, curve=r.metrics["loss_curve"][-3:])
    t=time.time(); ts = score_exact_match(base, test, adapter_dir=W/"teacher")
    log(stage="teacher_score", acc=ts.accuracy, lat=ts.mean_latency_s, wall=time.time()-t, fails=ts.failures[:4])
    configs = {
        "A_kd05": dict(alpha=0.5), "B_sft": dict(alpha=0.0), "C_kd09": dict(alpha=0.9),
        "D_kd05_last": dict(alpha=0.5, layer=[29]), "E_kd05_unfrozen": dict(alpha=0.5, freeze=False),
        "F_narrow": dict(alpha=0.5, freeze=False, hidden=384, layers=6), "G_sft_last": dict(alpha=0.0, layer=[29]),
        "H_kd05_lr3e3": dict(alpha=0.5, lr=3e-3),
    }
    procs = [subprocess.Popen([sys.executable, __file__, "child", k, json.dumps(v), str(base)], env={**os.environ, "OMP_NUM_THREADS": "2"}) for k, v in configs.items()]
    for p in procs: p.wait()
else:
    import torch; torch.set_num_threads(2)
    from L07_learning.pipelines.distillation_pipeline import *
    from L07_learning.tests.sft_factories import tool_rows
    name, v, base = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    train = tool_rows(96, seed=1); test = tool_rows(48, seed=2)
    t=time.time(); c=time.process_time()
    cfg = DistillationConfig(max_steps=60, batch_size=16, learning_rate=v.get("lr", 1e-3), alpha=v["alpha"], freeze_embeddings=v.get("freeze", True))
    spec = StudentSpec(num_layers=v.get("layers", 1), hidden_size=v.get("hidden"), layer_indices=v.get("layer"))
    if v["alpha"] == 0:
        teacher = load_teacher(base, W/"teacher")
        sd, init = derive_student(base, spec, W/f"init_{name}", 42, teacher=teacher)
        r = train_student(sd, train, cfg, W/f"s_{name}", None)
    else:
        r = run_distillation(base, train, W/f"s_{name}", cfg, spec, teacher_adapter_dir=W/"teacher")
    wall=time.time()-t; cpu=time.process_time()-c
    s = score_exact_match(W/f"s_{name}", test)
    log(stage=name, acc=s.accuracy, lat=s.mean_latency_s, wall=wall, cpu=cpu, params=r.student_parameters, ratio=r.parameter_ratio,
        curve=[round(p.loss,3) for p in r.loss_curve][::6], ce=[round(p.ce_loss,3) for p in r.loss_curve][::6], fails=s.failures[:3])
