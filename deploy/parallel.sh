#!/usr/bin/env bash
# firered-batch with GNU parallel: 4 shards on this machine (or on several: add -S h1,h2 and
# make the job file, manifest and FAL_KEY available there), then the merge.
#
#   ./parallel.sh job.yaml s3://BUCKET/jobs/NAME
#
# Change: N (the number of shards; fixed for the job once it has run), the output (a shared
# folder or bucket), and each shard's `concurrency` in the job file (the account's limit / N).
set -uo pipefail

JOB=${1:-job.yaml}
OUTPUT=${2:-s3://BUCKET/jobs/NAME}
N=${N:-4}

# {} is the shard's index, 0..N-1; each shard gets its own local work folder.
# --halt never: a failed shard does not stop the others. parallel's exit code is the number of
# shards that failed (capped at 101); each shard's own exit code is in the --joblog file.
parallel --jobs "$N" --halt never --line-buffer --tag --joblog "shards-$(date +%s).log" \
    firered-batch run "$JOB" --shard {}/"$N" --output "$OUTPUT" --work-dir "work/shard-{}" \
    ::: $(seq 0 $((N - 1)))
failed=$?

firered-batch merge "$OUTPUT" || exit $?
exit "$failed"
