#!/bin/sh
# Entrypoint of the router containers in compose.yaml: turns the compose secrets (one file each under
# $SECRETS_DIR, default /run/secrets) into the NEURAL_ROUTER_* variables the service reads, then
# execs `neural-router serve` with this script's arguments.
#
#   api_key            -> NEURAL_ROUTER_API_KEY   (bearer key of the routing API and /metrics)
#   admin_key          -> NEURAL_ROUTER_ADMIN_KEY (bearer key of /admin/reload and /admin/rollback)
#   postgres_password  -> NEURAL_ROUTER_FEEDBACK_URL=postgresql://$POSTGRES_USER:<pw>@$POSTGRES_HOST:$POSTGRES_PORT/$POSTGRES_DB
#
# The password is percent-encoded into the URL, so any characters are allowed. A missing or empty
# secret file stops the container with a message naming it (the service would otherwise start with
# authentication or the decision log switched off).
set -eu

secrets_dir="${SECRETS_DIR:-/run/secrets}"

read_secret() {
    file="$secrets_dir/$1"
    if [ ! -r "$file" ]; then
        echo "router-entrypoint: secret file $file is missing or unreadable (create it as deploy/README.md, 'Docker Compose (one host)', shows)" >&2
        exit 64
    fi
    value="$(cat "$file")"
    if [ -z "$value" ]; then
        echo "router-entrypoint: secret file $file is empty" >&2
        exit 64
    fi
    printf '%s' "$value"
}

NEURAL_ROUTER_API_KEY="$(read_secret api_key)"
NEURAL_ROUTER_ADMIN_KEY="$(read_secret admin_key)"
password="$(read_secret postgres_password)"
encoded="$(printf '%s' "$password" | python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.stdin.read(), safe=""))')"
NEURAL_ROUTER_FEEDBACK_URL="postgresql://${POSTGRES_USER:?}:${encoded}@${POSTGRES_HOST:?}:${POSTGRES_PORT:-5432}/${POSTGRES_DB:?}"
export NEURAL_ROUTER_API_KEY NEURAL_ROUTER_ADMIN_KEY NEURAL_ROUTER_FEEDBACK_URL

exec neural-router serve "$@"
