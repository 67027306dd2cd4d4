#!/bin/sh
# GitLab Runner: enrolls every job with cordon before its script runs.
#
# Install once per runner, in /etc/gitlab-runner/config.toml:
#   [[runners]]
#     pre_build_script = ". /usr/share/cordon/runner-hooks/gitlab-pre-build.sh"
# and give jobs an ID token for cordon once for the instance or group (a default in a CI/CD
# template every project includes, so pipelines themselves change nothing):
#   default:
#     id_tokens:
#       CORDON_ID_TOKEN:
#         aud: cordon
# With the shell executor the script runs in the job's cgroup. With the docker executor, mount
# cordon's control socket into job containers (volumes = ["/run/cordon/control.sock:/run/cordon/control.sock"])
# and the cordonctl binary, or enroll from the host with the container's cgroup in mind.
#
# Without a token the job runs unenrolled (the policy's `unenrolled_action` applies); set
# CORDON_ENROLL_REQUIRED=1 to fail such jobs instead.
cordon_token_var=${CORDON_TOKEN_VAR:-CORDON_ID_TOKEN}
# A cgroup that outlives its jobs (one runner process, no per-job session) must not carry the
# previous job's identity: end its binding first.
if ! ${CORDONCTL:-cordonctl} unenroll >/dev/null 2>&1; then
	echo "cordon: could not end an earlier job's enrollment" >&2
	[ "${CORDON_ENROLL_REQUIRED:-0}" = 1 ] && exit 1
fi
if eval "[ -n \"\${$cordon_token_var:-}\" ]"; then
	${CORDONCTL:-cordonctl} enroll --token-env "$cordon_token_var" ||
		{ echo "cordon: enrollment failed; the job runs unenrolled" >&2; [ "${CORDON_ENROLL_REQUIRED:-0}" = 1 ] && exit 1; }
else
	echo "cordon: no $cordon_token_var ID token for this job; it runs unenrolled" >&2
	[ "${CORDON_ENROLL_REQUIRED:-0}" = 1 ] && exit 1
fi
true
