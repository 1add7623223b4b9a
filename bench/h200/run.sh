#!/bin/bash
# One device call on the H200 (the `run` tool), from the repository root. The machine stays warm between calls,
# so what the calls carry (.carry/*, ignored by git) is kept in /root/stash and assembled there:
#   .carry/p1..p3/ggp0N  the default GGUF in three parts (a call carries at most 64 MiB)
#   .carry/whl/*.whl     wheels the device image lacks (gguf, for transformers' GGUF loader)
#   .carry/sft*/*.npz    fine-tuning windows (bench/make_sft_data.py), split over the calls
# STEPS (comma-separated, in this order): test (the GPU tests of the sparse path), train (dsa.longtrain from
# $INIT for $BUDGET s into /root/stash/$OUTNAME), pack (that delta into $OUT, in parts under 16 MiB), needle
# (bench.eval_long's needles with that delta on the held-out books in .carry/held, for $EVAL_S s).
set -eo pipefail
S=/root/stash
mkdir -p $S/sft $S/llm $S/whl
export PYTHONUNBUFFERED=1
for d in .carry/p1 .carry/p2 .carry/p3; do if [ -d $d ]; then cp $d/* $S/; fi; done
if [ -d .carry/whl ]; then cp .carry/whl/*.whl $S/whl/; fi
for d in .carry/sft*; do if [ -d $d ]; then cp $d/* $S/sft/; fi; done
if [ -d .carry/held ]; then cp .carry/held/* $S/; fi
G=$S/llm/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s $G ] && [ -s $S/ggp00 ] && [ -s $S/ggp01 ] && [ -s $S/ggp02 ]; then
  cat $S/ggp00 $S/ggp01 $S/ggp02 > $G
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $G" | sha256sum -c
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $S/whl/*.whl
export PYTHONPATH=/tmp/site
ls -la $S $S/sft
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
case ",$STEPS," in *,test,*)
  python3 -m pytest -q -x -p no:cacheprovider tests/test_dsa_flex.py 2>&1 | tail -15 ;;
esac
case ",$STEPS," in *,train,*)
  python3 -m dsa.longtrain --gguf-dir $S/llm --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --data $S/sft \
    --phases "$PHASES" --interleave --init-adapter "$INIT" --init-indexer "$INIT" --seed "${SEED:-0}" \
    --lr "$LR" --indexer-lr "$ILR" --tokens-per-step 65536 --queries 128 --time-budget "$BUDGET" \
    --stage "$STAGE" --out $S/$OUTNAME 2>&1 | tee $OUT/train.log | grep -v '^{"step"' | tail -40
  grep '^{"step"' $OUT/train.log | awk 'NR % 10 == 1' | cut -c1-220
  grep '^{"step"' $OUT/train.log | tail -3 ;;
esac
case ",$STEPS," in *,pack,*)
  tar -C $S -cf $OUT/delta.tar $OUTNAME && split -b 15M $OUT/delta.tar $OUT/delta.tar. && rm $OUT/delta.tar
  ls -la $OUT ;;
esac
case ",$STEPS," in *,needle,*)
  python3 -m bench.eval_long --gguf-dir $S/llm --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --adapter $S/$OUTNAME \
    --books $S/held_books.jsonl.xz --parts needle --lengths "${NEEDLE_LENGTHS:-16384,65536,131072,262144}" \
    --depths 0,0.5,1 --time-budget "$EVAL_S" --out $OUT/long_eval.json 2>&1 | tail -25 ;;
esac
