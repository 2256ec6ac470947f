#!/usr/bin/env bash
# Point a DVC repo at the local stack's S3: a remote named `s3` in .dvc/config.local (gitignored
# by DVC), so the committed .dvc/config and its default remote stay as they are.
#   bash infra/local/dvc-remote.sh [REPO]     (default: this checkout; up.sh runs it)
# Then: set -a; source infra/local/.env; set +a; dvc push -r s3
# The keys stay in the env file: DVC's S3 client reads AWS_ACCESS_KEY_ID/SECRET from the
# environment, so no secret is written into the DVC config.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

repo=$(cd "${1:-$REPO}" && pwd)
[ -d "$repo/.dvc" ] || die "$repo is not a DVC repo (no .dvc/)"
endpoint=$(sed -n 's/^AWS_ENDPOINT_URL=//p' "$STACK_ENV_FILE" 2>/dev/null || true)
endpoint=${endpoint:-http://$STACK_HOST:$STACK_S3_PORT}
dvc=$MAIN_BIN/dvc
command -v "$dvc" >/dev/null || dvc=dvc

cd "$repo"
export DVC_NO_ANALYTICS=1
# --force: replace an earlier definition, so running this twice is fine
"$dvc" remote add --local --force s3 s3://dvc-remote
"$dvc" remote modify --local s3 endpointurl "$endpoint"
log "dvc remote 's3' -> s3://dvc-remote at $endpoint in $repo/.dvc/config.local"
