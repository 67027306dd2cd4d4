#include "tls/trust_store.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <string_view>

#include "common/strings.h"
#include "common/unique_fd.h"

namespace cordon::tls {
namespace {

namespace fs = std::filesystem;

// What update-ca-certificates links into /etc/ssl/certs for our file.
constexpr const char *kOsStoreLink = "/etc/ssl/certs/cordon-ca.pem";
constexpr const char *kCertDir = "/usr/local/share/ca-certificates";
constexpr const char *kSystemdDir = "/etc/systemd";
constexpr const char *kSystemdDropInDir = "/etc/systemd/system.conf.d";
constexpr const char *kEnvironmentDDir = "/etc/environment.d";
constexpr const char *kProfileDir = "/etc/profile.d";
constexpr std::string_view kVariable = "NODE_EXTRA_CA_CERTS";

const std::string kProfileScriptText =
    std::string("# Written by `cordonctl ca install`, removed by `cordonctl ca uninstall`.\n"
                "# Node/Electron (Cursor) ignore the OS trust store and read only this.\n"
                "export ") +
    kEnvironmentLine + "\n";
const std::string kSystemdDropInText =
    std::string("# Written by `cordonctl ca install`, removed by `cordonctl ca uninstall`.\n"
                "# Services (CI runners among them) inherit this; Node ignores the OS trust store.\n"
                "[Manager]\n"
                "DefaultEnvironment=") +
    kEnvironmentLine + "\n";
const std::string kEnvironmentDText =
    std::string("# Written by `cordonctl ca install`, removed by `cordonctl ca uninstall`.\n") + kEnvironmentLine +
    "\n";

struct FileState {
	std::string content;
	mode_t mode = 0644;
	uid_t uid = 0;
	gid_t gid = 0;
};

Result<std::optional<FileState>> read_state(const std::string &path)
{
	UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
	if (!fd) {
		if (errno == ENOENT)
			return std::optional<FileState>();
		return system_error("open " + path);
	}
	struct stat st {};
	if (::fstat(fd.get(), &st) != 0)
		return system_error("stat " + path);
	if (!S_ISREG(st.st_mode))
		return plain_error(path + " is not a regular file");
	FileState state;
	state.mode = st.st_mode & 07777;
	state.uid = st.st_uid;
	state.gid = st.st_gid;
	char buf[8192];
	for (;;) {
		ssize_t n = ::read(fd.get(), buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return system_error("read " + path);
		if (n == 0)
			break;
		state.content.append(buf, static_cast<size_t>(n));
	}
	return std::optional<FileState>(std::move(state));
}

Status fsync_dir(const std::string &dir)
{
	UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	if (!fd || ::fsync(fd.get()) != 0)
		return system_error("fsync " + dir);
	return {};
}

std::string parent_of(const std::string &path)
{
	return path.substr(0, path.rfind('/'));
}

// Readers see the old file or the new one, never a torn one. The temporary name starts with a
// dot and does not end in .crt/.sh/.conf, so no reader of these directories picks it up.
Status replace_file(const std::string &path, const FileState &want)
{
	const std::string dir = parent_of(path);
	std::string tmp = dir + "/." + path.substr(dir.size() + 1) + ".cordon-XXXXXX";
	UniqueFd fd(::mkostemp(tmp.data(), O_CLOEXEC)); // mode 0600 until fchmod below
	if (!fd)
		return system_error("create a temporary file in " + dir);
	auto fail = [&](Error e) -> Status {
		::unlink(tmp.c_str());
		return e;
	};
	if ((want.uid != ::geteuid() || want.gid != ::getegid()) && ::fchown(fd.get(), want.uid, want.gid) != 0)
		return fail(system_error("chown " + tmp));
	if (::fchmod(fd.get(), want.mode) != 0)
		return fail(system_error("chmod " + tmp));
	const char *data = want.content.data();
	size_t left = want.content.size();
	while (left > 0) {
		ssize_t n = ::write(fd.get(), data, left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fail(system_error("write " + tmp));
		data += n;
		left -= static_cast<size_t>(n);
	}
	if (::fsync(fd.get()) != 0)
		return fail(system_error("fsync " + tmp));
	if (::rename(tmp.c_str(), path.c_str()) != 0)
		return fail(system_error("rename " + tmp + " to " + path));
	return fsync_dir(dir);
}

// Our own file, root-owned 0644; left alone when it already says exactly this.
Status ensure_file(const std::string &path, const std::string &content)
{
	auto current = read_state(path);
	if (!current)
		return current.error();
	if (*current && (*current)->content == content && (*current)->mode == 0644 && (*current)->uid == ::geteuid())
		return {};
	return replace_file(path, FileState{content, 0644, ::geteuid(), ::getegid()});
}

Status remove_file(const std::string &path, bool *removed = nullptr)
{
	if (::unlink(path.c_str()) == 0) {
		if (removed)
			*removed = true;
		return fsync_dir(parent_of(path));
	}
	if (errno == ENOENT)
		return {};
	return system_error("remove " + path);
}

Status ensure_dir(const std::string &path)
{
	if (::mkdir(path.c_str(), 0755) == 0) {
		if (::chmod(path.c_str(), 0755) != 0) // exact, whatever the umask
			return system_error("chmod " + path);
		return {};
	}
	if (errno == EEXIST)
		return {};
	return system_error("create " + path);
}

bool is_dir(const char *path)
{
	struct stat st {};
	return ::stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

// /etc/environment may be a symlink (to a managed copy): edit its target, do not replace the link.
std::string environment_file()
{
	std::error_code ec;
	if (!fs::is_symlink(kEnvironmentFile, ec))
		return kEnvironmentFile;
	auto target = fs::canonical(kEnvironmentFile, ec);
	return ec ? std::string(kEnvironmentFile) : target.string();
}

std::string tail(const std::string &text, size_t max)
{
	std::string t = text.size() > max ? "..." + text.substr(text.size() - max) : text;
	while (!t.empty() && (t.back() == '\n' || t.back() == ' '))
		t.pop_back();
	return t;
}

// Runs update-ca-certificates with a fixed environment and no terminal; its output is kept for
// the error message.
Status update_ca_certificates(bool fresh)
{
	const char *program = nullptr;
	for (const char *candidate : {"/usr/sbin/update-ca-certificates", "/sbin/update-ca-certificates",
	                              "/usr/bin/update-ca-certificates", "/usr/local/sbin/update-ca-certificates"}) {
		if (::access(candidate, X_OK) == 0) {
			program = candidate;
			break;
		}
	}
	if (!program)
		return plain_error("update-ca-certificates not found (it comes with the ca-certificates package)");
	int fds[2];
	if (::pipe2(fds, O_CLOEXEC) != 0)
		return system_error("pipe");
	UniqueFd read_end(fds[0]), write_end(fds[1]);

	posix_spawn_file_actions_t actions;
	posix_spawn_file_actions_init(&actions);
	posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&actions, write_end.get(), 1);
	posix_spawn_file_actions_adddup2(&actions, write_end.get(), 2);
	std::string path_env = "PATH=/usr/sbin:/usr/bin:/sbin:/bin", locale_env = "LC_ALL=C";
	std::string arg0 = program, arg1 = "--fresh";
	char *argv[] = {arg0.data(), fresh ? arg1.data() : nullptr, nullptr};
	char *envp[] = {path_env.data(), locale_env.data(), nullptr};
	pid_t pid = -1;
	int rc = ::posix_spawn(&pid, program, &actions, nullptr, argv, envp);
	posix_spawn_file_actions_destroy(&actions);
	if (rc != 0)
		return system_error(std::string("run ") + program, rc);
	write_end.reset();

	std::string output;
	char buf[4096];
	for (;;) {
		ssize_t n = ::read(read_end.get(), buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		output.append(buf, static_cast<size_t>(n));
	}
	int status = 0;
	while (::waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return system_error(std::string("wait for ") + program);
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return {};
	std::string how = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
	                                    : "was killed by signal " + std::to_string(WTERMSIG(status));
	return plain_error(std::string(program) + (fresh ? " --fresh " : " ") + how + ": " + tail(output, 2000));
}

} // namespace

Result<std::string> environment_with_line(const std::string &content)
{
	const std::string_view ours = std::string_view(kEnvironmentLine).substr(kVariable.size() + 1);
	bool present = false;
	size_t pos = 0, number = 0;
	while (pos < content.size()) {
		size_t end = content.find('\n', pos);
		if (end == std::string::npos)
			end = content.size();
		std::string_view line = std::string_view(content).substr(pos, end - pos);
		pos = end + 1;
		number++;
		// pam_env's syntax: KEY=VALUE, optionally quoted, optionally after "export".
		std::string_view s = trim(line);
		if (s.empty() || s.front() == '#')
			continue;
		if (s.substr(0, 7) == "export " || s.substr(0, 7) == "export\t")
			s = trim(s.substr(7));
		size_t eq = s.find('=');
		if (eq == std::string_view::npos || trim(s.substr(0, eq)) != kVariable)
			continue;
		std::string_view value = trim(s.substr(eq + 1));
		if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
		    value.back() == value.front())
			value = value.substr(1, value.size() - 2);
		if (value == ours) {
			present = true;
			continue;
		}
		return plain_error(std::string(kEnvironmentFile) + " line " + std::to_string(number) +
		                   " already sets " + std::string(kVariable) + "=" + std::string(value) +
		                   ": Node reads a single extra CA file, so cordon will not replace it (Node would "
		                   "stop trusting the CAs in that file). Remove or comment out that line, then run "
		                   "`cordonctl ca install` again");
	}
	if (present)
		return content;
	if (content.empty())
		return std::string(kEnvironmentLine) + "\n";
	if (content.back() == '\n')
		return content + kEnvironmentLine + "\n";
	// No final newline: ours goes last without one too, so removing it restores every byte.
	return content + "\n" + kEnvironmentLine;
}

std::string environment_without_line(const std::string &content)
{
	std::string out;
	size_t pos = 0;
	while (pos < content.size()) {
		size_t end = content.find('\n', pos);
		const bool terminated = end != std::string::npos;
		if (!terminated)
			end = content.size();
		std::string_view line = std::string_view(content).substr(pos, end - pos);
		pos = end + 1;
		if (line == kEnvironmentLine) {
			if (!terminated && !out.empty() && out.back() == '\n')
				out.pop_back(); // the newline install put in front of it
			continue;
		}
		out.append(line);
		if (terminated)
			out += '\n';
	}
	return out;
}

Status install_ca(const CertificateAuthority &ca)
{
	// Everything that can refuse is checked before anything changes.
	const std::string env_path = environment_file();
	auto env = read_state(env_path);
	if (!env)
		return env.error();
	FileState env_state = env->value_or(FileState{"", 0644, ::geteuid(), ::getegid()});
	auto new_env = environment_with_line(env_state.content);
	if (!new_env)
		return new_env.error();
	const std::string pem = ca.certificate_pem();
	if (pem.empty())
		return openssl_error("encode the CA certificate");

	// The OS store: curl, OpenSSL, GnuTLS, Python, Go, ...
	if (Status st = ensure_dir(kCertDir); !st)
		return st;
	auto previous = read_state(kTrustStoreCertPath);
	if (!previous)
		return previous.error();
	// A different CA under the same file name (the CA was re-created): a plain run would keep the
	// old hash link and tell the hooks (Java) nothing, since the link to the file itself is unchanged.
	const bool replaced = *previous && (*previous)->content != pem;
	if (Status st = ensure_file(kTrustStoreCertPath, pem); !st)
		return st;
	if (Status st = update_ca_certificates(replaced); !st)
		return st;

	// Node: login sessions (pam_env), login shells, systemd services, systemd user managers.
	if (!*env || *new_env != env_state.content) {
		env_state.content = std::move(*new_env);
		if (Status st = replace_file(env_path, env_state); !st)
			return st;
	}
	if (Status st = ensure_dir(kProfileDir); !st)
		return st;
	if (Status st = ensure_file(kProfileScript, kProfileScriptText); !st)
		return st;
	if (is_dir(kSystemdDir)) { // no systemd, no one to read the drop-in
		if (Status st = ensure_dir(kSystemdDropInDir); !st)
			return st;
		if (Status st = ensure_file(kSystemdManagerDropIn, kSystemdDropInText); !st)
			return st;
	}
	if (Status st = ensure_dir(kEnvironmentDDir); !st)
		return st;
	return ensure_file(kEnvironmentDDropIn, kEnvironmentDText);
}

Status uninstall_ca()
{
	std::optional<Error> first;
	auto note = [&](Status st) {
		if (!st && !first)
			first = st.error();
	};

	bool removed = false;
	note(remove_file(kTrustStoreCertPath, &removed));
	struct stat st {};
	// --fresh: a plain run leaves the links to a removed file (and their hash links) dangling.
	if (removed || ::lstat(kOsStoreLink, &st) == 0)
		note(update_ca_certificates(true));

	const std::string env_path = environment_file();
	auto env = read_state(env_path);
	if (!env) {
		note(env.error());
	} else if (*env) {
		FileState state = **env;
		std::string without = environment_without_line(state.content);
		if (without != state.content) {
			state.content = std::move(without);
			note(replace_file(env_path, state));
		}
	}
	note(remove_file(kProfileScript));
	note(remove_file(kSystemdManagerDropIn));
	note(remove_file(kEnvironmentDDropIn));
	// No package ships this directory; it was made for our drop-in, so an empty one goes too.
	if (::rmdir(kSystemdDropInDir) != 0 && errno != ENOENT && errno != ENOTEMPTY && errno != EEXIST)
		note(system_error(std::string("remove ") + kSystemdDropInDir));
	if (first)
		return *first;
	return {};
}

bool ca_installed(const CertificateAuthority &ca)
{
	auto current = read_state(kTrustStoreCertPath);
	return current && *current && (*current)->content == ca.certificate_pem();
}

} // namespace cordon::tls
