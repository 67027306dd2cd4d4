#!/bin/sh
# GitHub Actions self-hosted runner: enrolls every job with cordon before its first step.
#
# Install once per runner (pipelines change nothing): in the runner's .env file
#   ACTIONS_RUNNER_HOOK_JOB_STARTED=/usr/share/cordon/runner-hooks/github-job-started.sh
# The runner runs this hook in the job's own process tree (and cgroup), so cordond binds the
# job's OIDC claims (repository, ref, workflow, actor, ...) to exactly that cgroup.
#
# GitHub hands a job an OIDC token only when the workflow (or the organisation's default) grants
# `permissions: id-token: write`. Without it the job runs unenrolled and gets the policy's rules
# for unenrolled callers (`unenrolled_action`); this hook says so and does not fail the job,
# unless CORDON_ENROLL_REQUIRED=1.
set -u

audience=${CORDON_AUDIENCE:-cordon}
cordonctl=${CORDONCTL:-cordonctl}
required=${CORDON_ENROLL_REQUIRED:-0}

fail() {
	echo "cordon: $*" >&2
	[ "$required" = 1 ] && exit 1
	exit 0
}

# The runner's cgroup outlives its jobs: end the previous job's binding first, so that this job
# never runs under another job's identity, whether or not it gets a token of its own.
if ! "$cordonctl" unenroll >/dev/null 2>&1; then
	echo "cordon: could not end an earlier job's enrollment" >&2
	[ "$required" = 1 ] && exit 1
fi

if [ -z "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" ] || [ -z "${ACTIONS_ID_TOKEN_REQUEST_TOKEN:-}" ]; then
	fail "no OIDC token for this job (grant 'permissions: id-token: write'); it runs unenrolled"
fi

case $ACTIONS_ID_TOKEN_REQUEST_URL in
*\?*) url="$ACTIONS_ID_TOKEN_REQUEST_URL&audience=$audience" ;;
*) url="$ACTIONS_ID_TOKEN_REQUEST_URL?audience=$audience" ;;
esac

# The answer is {"value":"<JWT>"}; a JWT holds only base64url characters and dots.
answer=$(curl -sSf --max-time 20 -H "Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN" "$url") ||
	fail "could not fetch the job's OIDC token"
token=$(printf '%s' "$answer" | sed -n 's/.*"value" *: *"\([A-Za-z0-9._-]*\)".*/\1/p')
[ -n "$token" ] || fail "the OIDC token answer held no token"

printf '%s\n' "$token" | "$cordonctl" enroll --token-file - || fail "enrollment failed; the job runs unenrolled"
