#include "daemon/daemon.h"

#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "bpf/kernel_programs.h"
#include "common/cgroup.h"
#include "common/host_pattern.h"
#include "common/local_address.h"
#include "common/log.h"
#include "config/policy.h"
#include "daemon/approvals.h"
#include "daemon/control_server.h"
#include "daemon/dns_proxy.h"
#include "daemon/event_loop.h"
#include "daemon/journal.h"
#include "daemon/masking.h"
#include "daemon/metrics.h"
#include "daemon/metrics_server.h"
#include "daemon/recorder.h"
#include "daemon/relay.h"
#include "daemon/resolver.h"
#include "daemon/watch.h"
#include "daemon/workload_tokens.h"
#include "policy/rules.h"
#include "proxy/message_decoder.h"
#include "proxy/tls_endpoint.h"
#include "record/segment_store.h"
#include "tls/certificate_authority.h"
#include "tls/leaf_cache.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace cordon {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

enum Op : uint8_t { kSignalRead = 1, kTimer, kCancel };

// Reads stop/refresh signals through a signalfd on the loop.
class SignalHandler : public IoHandler {
public:
	SignalHandler(UniqueFd fd, std::function<void(int)> on_signal)
	    : fd_(std::move(fd)), on_signal_(std::move(on_signal))
	{}
	void arm() { io_uring_prep_read(loop().prepare(*this, kSignalRead), fd_.get(), &info_, sizeof(info_), 0); }
	void on_completion(uint8_t op, int res, uint32_t) override
	{
		if (op != kSignalRead || finished())
			return;
		if (res == sizeof(info_))
			on_signal_(static_cast<int>(info_.ssi_signo));
		if (!finished())
			arm();
	}
	void on_stop() override
	{
		loop().cancel_fd(*this, fd_.get(), kCancel);
		mark_finished();
	}

private:
	UniqueFd fd_;
	signalfd_siginfo info_{};
	std::function<void(int)> on_signal_;
};

// Once a second: idle timeouts, control session timeouts.
class Ticker : public IoHandler {
public:
	explicit Ticker(std::function<void()> on_tick) : on_tick_(std::move(on_tick)) {}
	void arm()
	{
		interval_.tv_sec = 1;
		io_uring_prep_timeout(loop().prepare(*this, kTimer), &interval_, 0, 0);
	}
	void on_completion(uint8_t op, int, uint32_t) override
	{
		if (op != kTimer || finished())
			return;
		on_tick_();
		arm();
	}
	void on_stop() override
	{
		loop().cancel_op(*this, kTimer, kCancel);
		mark_finished();
	}

private:
	__kernel_timespec interval_{};
	std::function<void()> on_tick_;
};

// Two descriptors per relayed connection: raise the limit as far as the kernel allows (root may
// go past the inherited hard limit, up to fs.nr_open).
void raise_fd_limit()
{
	rlim_t want = 1 << 20;
	std::ifstream nr_open("/proc/sys/fs/nr_open");
	if (unsigned long long n = 0; nr_open >> n && n > 0)
		want = static_cast<rlim_t>(n);
	rlimit lim{want, want};
	if (::setrlimit(RLIMIT_NOFILE, &lim) == 0)
		return;
	if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
		lim.rlim_cur = lim.rlim_max;
		if (::setrlimit(RLIMIT_NOFILE, &lim) != 0)
			log::warning(std::string("could not raise the open file limit: ") + std::strerror(errno));
	}
}

Result<uint64_t> own_netns_cookie()
{
	UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
	if (!fd)
		return system_error("socket");
	uint64_t cookie = 0;
	socklen_t len = sizeof(cookie);
	if (::getsockopt(fd.get(), SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) != 0)
		return system_error("SO_NETNS_COOKIE (needs Linux 5.14 or newer)");
	return cookie;
}

// The lowest port a process without CAP_NET_BIND_SERVICE may bind in this namespace (often
// lowered for rootless containers); empty when it cannot be read.
std::optional<unsigned> unprivileged_port_start()
{
	std::ifstream in("/proc/sys/net/ipv4/ip_unprivileged_port_start");
	unsigned value = 0;
	if (!(in >> value))
		return std::nullopt;
	return value;
}

bool is_ancestor_or_self(const std::string &ancestor, const std::string &path)
{
	if (ancestor == "/")
		return true;
	return path == ancestor || (path.size() > ancestor.size() && path.compare(0, ancestor.size(), ancestor) == 0 &&
	                            path[ancestor.size()] == '/');
}

// Where cordond itself lives in the cgroup tree. Its own cgroup is exempt from enforcement, so
// it must not be an enforced subtree's ancestor (the root cgroup on a host without systemd).
class OwnCgroup {
public:
	static Result<std::unique_ptr<OwnCgroup>> place(const CgroupHierarchy &h, const std::string &requested,
	                                                const config::Enforce &enforce)
	{
		auto current = h.own_path();
		if (!current)
			return current.error();
		std::string target = requested;
		if (target.empty()) {
			bool clash = false;
			for (const auto &e : enforce.cgroups())
				clash |= is_ancestor_or_self(*current, e);
			if (!clash)
				return std::unique_ptr<OwnCgroup>(new OwnCgroup(*current, "", false));
			target = "/cordond";
		}
		auto norm = normalize_cgroup_path(target);
		if (!norm)
			return norm.error();
		for (const auto &e : enforce.cgroups())
			if (is_ancestor_or_self(*norm, e))
				return plain_error("cordond's cgroup " + *norm + " would contain the enforced cgroup " +
				                   e);
		std::string dir = h.absolute(*norm);
		bool created = false;
		if (::mkdir(dir.c_str(), 0755) == 0)
			created = true;
		else if (errno != EEXIST)
			return system_error("create cgroup " + dir);
		std::ofstream procs(dir + "/cgroup.procs");
		procs << "0" << std::flush;
		if (!procs) {
			int err = errno;
			if (created)
				::rmdir(dir.c_str());
			return system_error("move cordond into " + dir, err);
		}
		log::info("cordond runs in cgroup " + *norm);
		return std::unique_ptr<OwnCgroup>(new OwnCgroup(*norm, dir, created, *current, h.absolute(*current)));
	}

	~OwnCgroup()
	{
		if (!created_)
			return;
		// Step back out so the cgroup is empty and can go.
		std::ofstream procs(previous_dir_ + "/cgroup.procs");
		procs << "0" << std::flush;
		if (::rmdir(dir_.c_str()) != 0)
			log::warning("could not remove cgroup " + dir_ + ": " + std::strerror(errno));
	}

	const std::string &path() const { return path_; }

private:
	OwnCgroup(std::string path, std::string dir, bool created, std::string previous = "",
	          std::string previous_dir = "")
	    : path_(std::move(path)), dir_(std::move(dir)), created_(created), previous_(std::move(previous)),
	      previous_dir_(std::move(previous_dir))
	{}
	std::string path_, dir_;
	bool created_;
	std::string previous_, previous_dir_;
};

// `dns`: whether DNS goes to the proxy yet (only once it listens, so no query meets a closed port).
std::map<uint16_t, uint32_t> port_flags(const config::Capture &c, bool dns)
{
	std::map<uint16_t, uint32_t> flags;
	for (uint32_t p : c.ports())
		flags[static_cast<uint16_t>(p)] |= CORDON_PORT_TCP_CAPTURE;
	for (uint32_t p : c.quic_ports())
		flags[static_cast<uint16_t>(p)] |= CORDON_PORT_UDP_REFUSE;
	if (c.mode() == config::ALL_TLS)
		for (auto &[port, f] : flags)
			f |= CORDON_PORT_ALL_DESTINATIONS;
	if (dns)
		flags[53] |= CORDON_PORT_DNS;
	return flags;
}

// What each recorded session names as its policy: the file and a digest of its effective form.
std::string policy_version(const std::string &source, const config::Policy &policy)
{
	return source + " sha256:" + record::hex(record::sha256(policy_to_yaml(policy))).substr(0, 16);
}

struct Runtime {
	const DaemonOptions &options;
	CgroupHierarchy &cgroups;
	OwnCgroup &own;
	KernelPrograms &kernel;
	Journal &journal;
	const tls::CertificateAuthority &ca;
	tls::LeafCache &leaves;
	RelayServer *relay = nullptr;
	TargetResolver *resolver = nullptr;
	DnsProxy *dns = nullptr;
	BufferPool *pool = nullptr;
	const proxy::MessageDecoder *decoder = nullptr;
	// The policy in force: the startup one, with the reloadable sections as last reloaded.
	config::Policy running = options.policy;
	std::unique_ptr<TokenVerifier> tokens{};
	identity::Enrollments enrollments{};
	Approvals approvals{journal};
	DaemonMetrics *metrics = nullptr;
	std::string metrics_listen{}, metrics_error{}; // for status: where, and why not

	void configure_approvals(const config::Approvals &a)
	{
		approvals.configure(std::chrono::seconds(a.timeout_seconds()), a.max_pending());
	}

	// `cordonctl approve ID [--for D]` and `cordonctl deny ID`, root only.
	json answer_approval(const json &request, const ControlPeer &peer, bool approve)
	{
		auto id = request.find("id");
		if (id == request.end() || !id->is_string())
			return json{{"ok", false}, {"error", "expected an approval \"id\""}};
		long for_seconds = 0;
		if (auto f = request.find("for_seconds"); f != request.end()) {
			if (!approve || !f->is_number_integer() || f->get<long>() <= 0 || f->get<long>() > 366L * 86400)
				return json{
				    {"ok", false},
				    {"error", "for_seconds must be a positive number of seconds, with approve"}};
			for_seconds = f->get<long>();
		}
		// Who answered, for the journal: the user behind the control socket, and the person who
		// logged in (loginuid survives sudo) when that is someone else.
		auto name_of = [](uid_t uid) {
			passwd *pw = ::getpwuid(uid);
			return pw ? std::string(pw->pw_name) : "uid " + std::to_string(uid);
		};
		std::string approver = name_of(peer.uid);
		std::ifstream loginuid("/proc/" + std::to_string(peer.pid) + "/loginuid");
		if (unsigned long login = 0;
		    loginuid >> login && login != 4294967295UL && login != peer.uid && peer.alive())
			approver += " (logged in as " + name_of(static_cast<uid_t>(login)) + ")";
		auto done = approvals.answer(id->get<std::string>(), approve, approver, for_seconds);
		if (!done)
			return json{{"ok", false}, {"error", done.error().message()}};
		return json{{"ok", true}, {"message", *done}};
	}

	// `cordonctl enroll`, run inside a job: the caller's cgroup comes from the kernel (the peer's
	// pidfd pins the process while /proc is read), the claims from a verified token.
	json enroll(const json &request, const ControlPeer &peer)
	{
		JournalEntry e;
		e.add("CORDON_EVENT", "enroll")
		    .add("CORDON_PID", std::to_string(peer.pid))
		    .add("CORDON_UID", std::to_string(peer.uid));
		auto refuse = [&](const std::string &why, bool retry = false) {
			e.priority = retry ? 6 : 4;
			e.message = std::string(retry ? "enrollment deferred: " : "enrollment refused: ") + why;
			e.add("CORDON_RESULT", retry ? "retry" : "refused").add("CORDON_ERROR", why);
			journal.send(std::move(e));
			json j{{"ok", false}, {"error", why}};
			if (retry)
				j["retry"] = true;
			return j;
		};
		auto token = request.find("token");
		if (token == request.end() || !token->is_string() || token->get<std::string>().empty())
			return refuse("expected {\"command\":\"enroll\",\"token\":\"<JWT>\"}");
		if (!tokens || tokens->issuers() == 0)
			return refuse("this cordond accepts no workload tokens (the policy lists no identity.issuers)");
		if (!peer.pidfd)
			return refuse("cannot identify the caller safely: the kernel lacks SO_PEERPIDFD (Linux 6.5+)");
		if (peer.pid <= 0) // pid 0: a peer in a PID namespace cordond cannot see into
			return refuse("cannot identify the enrolling process");
		auto cgroup = cgroups.path_of_pid(peer.pid);
		// Checked after reading: a live pidfd means the pid was not recycled under us.
		if (!cgroup || !peer.alive())
			return refuse("the enrolling process is gone" +
			              (cgroup ? "" : ": " + cgroup.error().message()));
		e.add("CORDON_CGROUP", *cgroup);
		// A binding covers the cgroups below its own: one on the root would cover everyone.
		if (*cgroup == "/")
			return refuse("cannot enroll from the root cgroup: run the job in a cgroup of its own");
		const int64_t now = ::time(nullptr);
		auto verified = tokens->verify(token->get<std::string>(), *cgroup, now);
		if (!verified)
			return refuse(verified.error().context, verified.error().code == EAGAIN);
		auto bound = enrollments.bind(std::move(*verified), now);
		if (!bound)
			return refuse(bound.error().message());
		const auto &b = **bound;
		e.priority = 6;
		e.message = "workload " + b.identity() + " enrolled for cgroup " + b.cgroup;
		e.add("CORDON_RESULT", "ok")
		    .add("CORDON_IDENTITY", b.identity())
		    .add_if("CORDON_CLAIMS", b.journal_claims != "{}" ? b.journal_claims : "")
		    .add("CORDON_EXPIRES", std::to_string(b.expires_at));
		journal.send(std::move(e));
		return json{{"ok", true},
		            {"identity", b.identity()},
		            {"cgroup", b.cgroup},
		            {"expires_at", b.expires_at},
		            {"claims", json::parse(b.journal_claims, nullptr, false)}};
	}

	// `cordonctl unenroll`, run by a job-started hook before it enrolls: the caller's own cgroup
	// (from the kernel, as for enroll) loses its binding, so a job without a token of its own
	// never runs under the previous job's identity on a runner whose cgroup outlives its jobs.
	// Anyone may: it only ever ends the caller's own cgroup's binding.
	json unenroll(const ControlPeer &peer)
	{
		if (!peer.pidfd)
			return json{
			    {"ok", false},
			    {"error", "cannot identify the caller safely: the kernel lacks SO_PEERPIDFD (Linux 6.5+)"}};
		if (peer.pid <= 0) // pid 0: a peer in a PID namespace cordond cannot see into
			return json{{"ok", false}, {"error", "cannot identify the calling process"}};
		auto cgroup = cgroups.path_of_pid(peer.pid);
		if (!cgroup || !peer.alive())
			return json{
			    {"ok", false},
			    {"error", "the calling process is gone" + (cgroup ? "" : ": " + cgroup.error().message())}};
		auto ended = enrollments.unbind(*cgroup);
		if (ended) {
			JournalEntry e;
			e.message = "workload " + ended->identity() + " unenrolled from cgroup " + *cgroup;
			e.add("CORDON_EVENT", "unenroll")
			    .add("CORDON_PID", std::to_string(peer.pid))
			    .add("CORDON_UID", std::to_string(peer.uid))
			    .add("CORDON_CGROUP", *cgroup)
			    .add("CORDON_IDENTITY", ended->identity());
			journal.send(std::move(e));
		}
		return json{{"ok", true}, {"cgroup", *cgroup}, {"identity", ended ? ended->identity() : ""}};
	}

	json identities() const
	{
		json list = json::array();
		for (const auto &e : enrollments.list())
			list.push_back({{"identity", e->identity()},
			                {"cgroup", e->cgroup},
			                {"issuer", e->issuer},
			                {"subject", e->subject},
			                {"enrolled_at", e->enrolled_at},
			                {"expires_at", e->expires_at},
			                {"claims", json::parse(e->journal_claims, nullptr, false)}});
		return json{{"ok", true}, {"identities", list}};
	}

	// Once a second: bindings end with their token or when their cgroup empties.
	void sweep_enrollments()
	{
		auto populated = [this](const std::string &cgroup) {
			std::ifstream events(cgroups.absolute(cgroup) + "/cgroup.events");
			std::string key, value;
			while (events >> key >> value)
				if (key == "populated")
					return value == "1";
			return false; // gone
		};
		for (const auto &[ended, why] : enrollments.sweep(::time(nullptr), populated)) {
			JournalEntry e;
			e.message =
			    "workload " + ended->identity() + " no longer enrolled for " + ended->cgroup + ": " + why;
			e.add("CORDON_EVENT", "enrollment_end")
			    .add("CORDON_IDENTITY", ended->identity())
			    .add("CORDON_CGROUP", ended->cgroup)
			    .add("CORDON_REASON", why);
			journal.send(std::move(e));
		}
	}

	// SIGHUP and `cordonctl reload`: the policy file read again. Its rules and masking apply to
	// connections accepted from now on; live connections keep theirs, and nothing is dropped. A
	// file that does not load changes nothing. Capture, enforcement, daemon and TLS settings
	// need a restart: a change to them is reported, not applied.
	json reload()
	{
		const std::string &source = options.policy_source;
		JournalEntry e;
		e.add("CORDON_EVENT", "policy_reload").add("CORDON_POLICY", source);
		auto fail = [&](const std::string &why) {
			e.priority = 3;
			e.message = "policy reload failed; the running policy stays: " + why;
			e.add("CORDON_RESULT", "failed").add("CORDON_ERROR", why);
			log::error(e.message);
			journal.send(std::move(e));
			if (metrics)
				metrics->policy_reloaded(false);
			return json{{"ok", false}, {"error", why}};
		};
		if (source.empty() || source.front() == '<')
			return fail(
			    "cordond runs on the embedded default policy: start it with --config FILE to reload");
		auto loaded = load_policy_file(source);
		if (!loaded)
			return fail(loaded.error().message());
		if (Status st = apply_policy_yaml(*loaded, options.overrides_yaml, "command line"); !st)
			return fail(st.error().message());
		auto rules = policy::Rules::compile(*loaded);
		if (!rules)
			return fail("rules: " + rules.error().message());
		auto verifier = TokenVerifier::create(loaded->identity());
		if (!verifier)
			return fail(verifier.error().message());
		std::shared_ptr<MaskEngine> mask;
		if (loaded->mask().enabled()) {
			auto engine = MaskEngine::create(loaded->mask(), decoder);
			if (!engine)
				return fail(engine.error().message());
			mask = std::move(*engine);
		}
		std::vector<std::string> restart;
		const auto note = [&](const char *name, const google::protobuf::Message &now,
		                      const google::protobuf::Message &was) {
			if (now.SerializeAsString() != was.SerializeAsString())
				restart.push_back(name);
		};
		note("capture", loaded->capture(), running.capture());
		note("enforce", loaded->enforce(), running.enforce());
		note("daemon", loaded->daemon(), running.daemon());
		note("tls", loaded->tls(), running.tls());
		note("recording", loaded->recording(), running.recording());
		relay->reload(*rules, mask, policy_version(source, *loaded));
		tokens = std::move(*verifier);            // bindings stay; new enrollments use the new issuers
		configure_approvals(loaded->approvals()); // pending approvals and grants stay
		*running.mutable_rules() = loaded->rules();
		running.set_default_action(loaded->default_action());
		running.set_unenrolled_action(loaded->unenrolled_action());
		*running.mutable_identity() = loaded->identity();
		*running.mutable_approvals() = loaded->approvals();
		*running.mutable_mask() = loaded->mask();
		std::string needs_restart;
		for (const auto &r : restart)
			needs_restart += (needs_restart.empty() ? "" : ",") + r;
		e.message =
		    "policy reloaded from " + source + ": " + std::to_string((*rules)->size()) + " rules, masking " +
		    (mask ? "on" : "off") +
		    (restart.empty() ? "" : "; changes to " + needs_restart + " need a restart and were not applied");
		e.priority = restart.empty() ? 6 : 4;
		if (metrics)
			metrics->policy_reloaded(true);
		e.add("CORDON_RESULT", "ok")
		    .add("CORDON_RULES", std::to_string((*rules)->size()))
		    .add_if("CORDON_NEEDS_RESTART", needs_restart);
		log::info(e.message);
		journal.send(std::move(e));
		return json{{"ok", true},
		            {"rules", (*rules)->size()},
		            {"masking", mask != nullptr},
		            {"needs_restart", restart},
		            {"message", "policy reloaded from " + source}};
	}

	json status() const
	{
		const auto &p = options.policy;
		json j;
		j["ok"] = true;
		j["version"] = kCordonVersion;
		j["pid"] = ::getpid();
		j["policy"] = options.policy_source;
		j["programs"] = {{"attached", kernel.program_names()},
		                 {"adopted", kernel.adopted()},
		                 {"pin_dir", p.daemon().pin_dir()},
		                 {"cgroup_root", cgroups.mount_point()}};
		json listeners = json::array();
		for (const auto &l : relay->listening())
			listeners.push_back(l.to_string());
		j["listeners"] = listeners;
		j["enforce"] = {
		    {"cgroups", std::vector<std::string>(p.enforce().cgroups().begin(), p.enforce().cgroups().end())},
		    {"exempt", std::vector<std::string>(p.enforce().exempt_cgroups().begin(),
		                                        p.enforce().exempt_cgroups().end())},
		    {"own_cgroup", own.path()}};
		json hosts = json::array();
		for (const auto &n : resolver->snapshot())
			hosts.push_back({{"name", n.name},
			                 {"addresses", n.addresses},
			                 {"error", n.error},
			                 {"next_refresh_s", n.next_refresh_in_s}});
		json targets = json::array(), strict_exempt = json::array();
		if (auto t = kernel.list_targets()) {
			for (const auto &[cidr, source] : *t) {
				if (!(source & (CORDON_TARGET_CIDR | CORDON_TARGET_RESOLVED))) {
					strict_exempt.push_back(cidr.to_string());
					continue;
				}
				targets.push_back(
				    {{"cidr", cidr.to_string()},
				     {"source", (source & CORDON_TARGET_CIDR) && (source & CORDON_TARGET_RESOLVED)
				                    ? "cidr+resolved"
				                : (source & CORDON_TARGET_CIDR) ? "cidr"
				                                                : "resolved"}});
			}
		}
		j["capture"] = {
		    {"ports", std::vector<uint32_t>(p.capture().ports().begin(), p.capture().ports().end())},
		    {"quic_ports",
		     std::vector<uint32_t>(p.capture().quic_ports().begin(), p.capture().quic_ports().end())},
		    {"patterns", std::vector<std::string>(p.capture().hosts().begin(), p.capture().hosts().end())},
		    {"hosts", hosts},
		    {"targets", targets},
		    {"mode", p.capture().mode() == config::ALL_TLS ? "all-tls" : "targets"},
		    {"strict_exempt", strict_exempt}};
		if (dns) {
			DnsProxyStats d = dns->stats();
			json dns_listen = json::array();
			for (const auto &l : dns->settings().listen)
				dns_listen.push_back(l.to_string());
			j["dns"] = {{"listen", dns_listen},
			            {"upstream", dns->settings().upstream.to_string()},
			            {"udp_queries", d.udp_queries},
			            {"tcp_queries", d.tcp_queries},
			            {"answered", d.answered},
			            {"captured_answers", d.captured_answers},
			            {"added_addresses", d.added_addresses},
			            {"unreadable_answers", d.unreadable_answers},
			            {"servfail", d.servfail},
			            {"timeouts", d.timeouts},
			            {"dropped", d.dropped}};
		}
		json counters = json::object();
		if (auto c = kernel.counters())
			for (int i = 0; i < CORDON_CTR__COUNT; i++)
				counters[counter_name(i)] = (*c)[i];
		j["counters"] = counters;
		if (auto n = kernel.origin_entries())
			j["origin_entries"] = *n;
		const RelayStats &s = relay->stats();
		j["relay"] = {{"active", relay->active()},
		              {"accepted", s.accepted},
		              {"closed", s.closed},
		              {"lookup_missed", s.lookup_missed},
		              {"over_limit", s.over_limit},
		              {"upstream_failed", s.upstream_failed},
		              {"buffers_in_use", pool->in_use()},
		              {"buffers", pool->count()}};
		j["journal"] = {
		    {"written", journal.written()}, {"dropped", journal.dropped()}, {"fell_back", journal.fell_back()}};
		j["metrics"] = {{"listen", metrics_listen}, {"error", metrics_error}};
		j["tls"] = {
		    {"ca_fingerprint", ca.fingerprint_sha256()},
		    {"ca_certificate", ca.cert_path()},
		    {"leaves_cached", leaves.size()},
		    {"leaves_minted", leaves.minted()},
		    {"intercepted", s.intercepted},
		    {"passed_through", s.passed_through},
		    {"refused", s.refused},
		    {"requests", s.requests},
		    {"missing_sni", p.tls().missing_sni() == config::PASSTHROUGH ? "passthrough" : "refuse"},
		    {"non_target_sni", p.tls().non_target_sni() == config::PASSTHROUGH ? "passthrough" : "refuse"}};
		json conns = json::array();
		for (const auto &c : relay->connections())
			conns.push_back({{"id", c.id},
			                 {"pid", c.pid},
			                 {"uid", c.uid},
			                 {"gid", c.gid},
			                 {"comm", c.comm},
			                 {"cgroup", c.cgroup},
			                 {"client", c.client},
			                 {"destination", c.destination},
			                 {"upstream_local", c.upstream_local},
			                 {"state", c.state},
			                 {"mode", c.mode},
			                 {"sni", c.sni},
			                 {"alpn", c.alpn},
			                 {"requests", c.requests},
			                 {"bytes_up", c.bytes_up},
			                 {"bytes_down", c.bytes_down},
			                 {"age_ms", c.age_ms}});
		j["connections"] = conns;
		return j;
	}

	ControlReply handle_control(const std::string &line, const ControlPeer &peer)
	{
		auto answer = [](const json &j) {
			// Strings from jobs (comm, cgroup names) need not be UTF-8: replace, never throw.
			return ControlReply{j.dump(-1, ' ', false, json::error_handler_t::replace), false};
		};
		json request = json::parse(line, nullptr, false);
		if (request.is_discarded() || !request.is_object() || !request.contains("command") ||
		    !request["command"].is_string())
			return answer({{"ok", false}, {"error", "expected a JSON object with a \"command\""}});
		const std::string command = request["command"];
		if (command == "status") {
			if (!peer.admin)
				return answer({{"ok", false}, {"error", "permission denied: status is for root"}});
			return answer(status());
		}
		if (command == "watch") {
			// Messages carry code and prompts: for root only.
			if (!peer.admin)
				return answer({{"ok", false}, {"error", "permission denied: watch is for root"}});
			ControlReply r = answer({{"ok", true}, {"event", "watching"}, {"pid", ::getpid()}});
			r.subscribe = true;
			return r;
		}
		if (command == "enroll")
			return answer(enroll(request, peer)); // any caller: jobs enroll themselves
		if (command == "unenroll")
			return answer(unenroll(peer)); // any caller, for its own cgroup only
		if (command == "approvals" || command == "approve" || command == "deny") {
			if (!peer.admin)
				return answer(
				    {{"ok", false}, {"error", "permission denied: " + command + " is for root"}});
			if (command == "approvals")
				return answer(approvals.list());
			return answer(answer_approval(request, peer, command == "approve"));
		}
		if (command == "identities") {
			if (!peer.admin)
				return answer({{"ok", false}, {"error", "permission denied: identities is for root"}});
			return answer(identities());
		}
		if (command == "metrics") {
			// What the metrics endpoint serves, whether or not it is open.
			if (!peer.admin)
				return answer({{"ok", false}, {"error", "permission denied: metrics is for root"}});
			return answer({{"ok", true}, {"text", metrics ? metrics->render() : std::string()}});
		}
		if (command == "reload") {
			if (!peer.admin)
				return answer({{"ok", false}, {"error", "permission denied: reload is for root"}});
			return answer(reload());
		}
		return answer({{"ok", false}, {"error", "unknown command '" + command + "'"}});
	}
};

Status block_signals(sigset_t &set)
{
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	if (::sigprocmask(SIG_BLOCK, &set, nullptr) != 0)
		return system_error("block signals");
	::signal(SIGPIPE, SIG_IGN);
	return {};
}

} // namespace

Status run_daemon(const DaemonOptions &options)
{
	const config::Policy &p = options.policy;
	// Block before any thread starts so every thread inherits the mask.
	sigset_t signals;
	if (Status st = block_signals(signals); !st)
		return st;
	raise_fd_limit();

	auto hierarchy = CgroupHierarchy::open_system();
	if (!hierarchy)
		return hierarchy.error();
	auto own = OwnCgroup::place(*hierarchy, options.own_cgroup, p.enforce());
	if (!own)
		return own.error();
	auto cookie = own_netns_cookie();
	if (!cookie)
		return cookie.error();

	// Resolve cgroup ids up front: a missing enforced cgroup is a configuration error.
	std::map<uint64_t, uint32_t> scopes;
	for (const auto &path : p.enforce().cgroups()) {
		auto id = hierarchy->id_of(path);
		if (!id)
			return plain_error("enforce.cgroups: " + id.error().message());
		scopes[*id] = CORDON_SCOPE_ENFORCE;
	}
	for (const auto &path : p.enforce().exempt_cgroups()) {
		auto id = hierarchy->id_of(path);
		if (!id)
			return plain_error("enforce.exempt_cgroups: " + id.error().message());
		scopes[*id] = CORDON_SCOPE_EXEMPT;
	}
	auto own_id = hierarchy->id_of((*own)->path());
	if (!own_id)
		return own_id.error();
	scopes[*own_id] = CORDON_SCOPE_EXEMPT;

	KernelSettings ks;
	ks.listen_ipv4 = *IpAddress::parse(p.daemon().listen_ipv4());
	ks.listen_ipv6 = *IpAddress::parse(p.daemon().listen_ipv6());
	ks.listen_port = static_cast<uint16_t>(p.daemon().listen_port());
	ks.dns_port = p.capture().dns_proxy() ? static_cast<uint16_t>(p.daemon().dns_port()) : 0;
	ks.dns_pass_when_down = p.capture().dns_pass_when_down();
	ks.upstream_mark = p.daemon().upstream_mark();
	ks.netns_cookie = *cookie;
	ks.cgroup_id = *own_id;
	ks.pin_dir = p.daemon().pin_dir();
	ks.cgroup_mount = hierarchy->mount_point();
	const std::string address_label = local_address_label(ks.pin_dir);
	std::string netns_off; // why containers are refused although the policy names a listener
	bool added_address = false;
	if (!p.daemon().netns_listen().empty()) {
		ks.netns_listen = *SocketAddress::parse(p.daemon().netns_listen());
		if (ks.dns_port != 0)
			ks.netns_dns_port = static_cast<uint16_t>(p.daemon().netns_dns_port());
		if (auto unprivileged = unprivileged_port_start();
		    unprivileged && *unprivileged <= std::max(ks.netns_listen.port, ks.netns_dns_port)) {
			netns_off = "net.ipv4.ip_unprivileged_port_start is " + std::to_string(*unprivileged) +
			            ", so any user could listen on " + p.daemon().netns_listen() +
			            " while cordond is down: containers' captured connections are refused instead";
			ks.netns_listen = {};
			ks.netns_dns_port = 0;
		}
	}
	if (ks.netns_listen.port != 0) {
		// Local before any program redirects there: an address that is not local would send a
		// container's connection out through the host's default route instead.
		// Only one this start made may be taken back on failure (never the running instance's).
		auto present = local_addresses(address_label);
		added_address =
		    present && std::find(present->begin(), present->end(), ks.netns_listen.ip) == present->end();
		if (Status st = add_local_address(ks.netns_listen.ip, address_label); !st)
			return plain_error("daemon.netns_listen: " + st.error().message());
	}
	auto kernel = KernelPrograms::attach(ks);
	if (!kernel) {
		// Another cordond holding the pins, say: leave no address of ours behind.
		if (added_address)
			(void)remove_local_address(ks.netns_listen.ip, address_label);
		return kernel.error();
	}
	KernelPrograms &kp = **kernel;
	// The programs now redirect only to this policy's address: one a previous policy named goes.
	if (auto stale = local_addresses(address_label); !stale) {
		log::warning("daemon.netns_listen: " + stale.error().message());
	} else {
		for (const IpAddress &ip : *stale)
			if (ks.netns_listen.port == 0 || ip != ks.netns_listen.ip)
				if (Status st = remove_local_address(ip, address_label); !st)
					log::warning("daemon.netns_listen: " + st.error().message());
	}

	Journal journal;
	{
		JournalEntry e;
		e.message = std::string(kp.adopted() ? "adopted pinned" : "attached") +
		            " BPF programs at cgroup2 root " + hierarchy->mount_point() + " (pins in " + ks.pin_dir +
		            ")";
		e.add("CORDON_EVENT", "bpf_attach")
		    .add("CORDON_PIN_DIR", ks.pin_dir)
		    .add("CORDON_CGROUP_ROOT", hierarchy->mount_point())
		    .add("CORDON_ADOPTED", kp.adopted() ? "1" : "0");
		journal.send(std::move(e));
	}
	if (!netns_off.empty()) {
		log::error("daemon.netns_listen: " + netns_off);
		JournalEntry e;
		e.priority = LOG_ERR;
		e.message = "containers' listener off: " + netns_off;
		e.add("CORDON_EVENT", "netns_listen_off").add("CORDON_REASON", netns_off);
		journal.send(std::move(e));
	}

	if (Status st = kp.set_scopes(scopes); !st)
		return st;
	// With the DNS proxy on, DNS is redirected from here on; until the proxy listens (below) it
	// is refused like any capture while cordond is away, never passed unseen.
	if (Status st = kp.set_ports(port_flags(p.capture(), p.capture().dns_proxy())); !st)
		return st;

	// CIDR targets are exact; resolved ones left by a previous cordond are kept for `retain`.
	std::set<std::string> cidrs(p.capture().cidrs().begin(), p.capture().cidrs().end());
	std::vector<IpAddress> inherited;
	auto existing = kp.list_targets();
	if (!existing)
		return existing.error();
	for (const auto &[cidr, sources] : *existing) {
		if ((sources & CORDON_TARGET_CIDR) && !cidrs.count(cidr.to_string()))
			if (Status st = kp.remove_target(cidr, CORDON_TARGET_CIDR); !st)
				return st;
		if (sources & CORDON_TARGET_RESOLVED)
			inherited.push_back(cidr.base);
	}
	for (const auto &text : cidrs)
		if (Status st = kp.add_target(*Cidr::parse(text), CORDON_TARGET_CIDR); !st)
			return st;
	std::set<std::string> exempt(p.capture().strict_exempt_cidrs().begin(),
	                             p.capture().strict_exempt_cidrs().end());
	for (const auto &[cidr, sources] : *existing)
		if ((sources & CORDON_TARGET_STRICT_EXEMPT) && !exempt.count(cidr.to_string()))
			if (Status st = kp.remove_target(cidr, CORDON_TARGET_STRICT_EXEMPT); !st)
				return st;
	for (const auto &text : exempt)
		if (Status st = kp.add_target(*Cidr::parse(text), CORDON_TARGET_STRICT_EXEMPT); !st)
			return st;

	// The host CA, created on first start; leaves for intercepted names come from it.
	auto ca = tls::CertificateAuthority::load_or_create(p.daemon().state_dir());
	if (!ca)
		return plain_error("host CA in " + p.daemon().state_dir() + ": " + ca.error().message());
	if (ca->created()) {
		JournalEntry e;
		e.message = "created the host CA " + ca->cert_path() + " (" + ca->fingerprint_sha256() +
		            "); install it with `cordonctl ca install`";
		e.add("CORDON_EVENT", "ca_created").add("CORDON_CA_FINGERPRINT", ca->fingerprint_sha256());
		journal.send(std::move(e));
	}
	tls::LeafCache leaves(*ca, p.tls().leaf_cache_size(), std::chrono::hours(p.tls().leaf_validity_hours()));
	auto server_ctx = proxy::make_server_context();
	if (!server_ctx)
		return server_ctx.error();
	auto client_ctx = proxy::make_client_context(p.tls().upstream_ca_file(), ca->certificate());
	if (!client_ctx)
		return client_ctx.error();

	// Before the event loop: the loop's connections record into it until they are gone.
	std::unique_ptr<Recorder> recorder;
	if (p.recording().enabled()) {
		const auto &rc = p.recording();
		RecorderSettings settings;
		settings.dir = rc.dir().empty() ? p.daemon().state_dir() + "/recordings" : rc.dir();
		settings.key_path = p.daemon().state_dir() + "/recording.key";
		char host[256] = {};
		::gethostname(host, sizeof(host) - 1);
		settings.host = host;
		settings.max_segment_bytes = uint64_t{rc.max_segment_mb()} << 20;
		settings.sync_interval = std::chrono::milliseconds(rc.sync_ms());
		settings.fail_open = rc.on_failure() == config::OPEN;
		settings.max_total_bytes = uint64_t{rc.max_total_mb()} << 20;
		settings.max_age_seconds = int64_t{rc.max_age_days()} * 86400;
		settings.max_message_bytes = rc.max_message_bytes();
		settings.max_queue_bytes = size_t{rc.max_queue_mb()} << 20;
		auto started = Recorder::start(settings, journal);
		if (!started)
			return started.error();
		recorder = std::move(*started);
		log::info("recording sessions to " + settings.dir);
	} else {
		log::warning("session recording is off (recording.enabled: false)");
	}
	auto loop = EventLoop::create(4096);
	if (!loop)
		return loop.error();
	auto pool = BufferPool::create((*loop)->ring(), 1, p.daemon().buffer_count(), p.daemon().buffer_size());
	if (!pool)
		return pool.error();

	CgroupPathCache cgroup_paths(*hierarchy, 4096);
	DaemonMetrics metrics; // outlives the relay, which counts into it
	RelaySettings rs;
	rs.listen = {SocketAddress{ks.listen_ipv4, ks.listen_port}, SocketAddress{ks.listen_ipv6, ks.listen_port}};
	if (ks.netns_listen.port != 0)
		rs.listen.push_back(ks.netns_listen);
	rs.upstream_mark = ks.upstream_mark;
	rs.own_netns_cookie = ks.netns_cookie;
	rs.connect_timeout = std::chrono::milliseconds(p.daemon().connect_timeout_ms());
	rs.idle_timeout = std::chrono::seconds(p.daemon().idle_timeout_seconds());
	rs.max_connections = p.daemon().max_connections();
	rs.memory_limit_bytes = uint64_t{p.daemon().memory_limit_mb()} << 20;
	rs.shed_memory_percent = p.daemon().shed_memory_percent();
	for (const auto &h : p.capture().hosts())
		rs.tls.intercept_hosts.push_back(*HostPattern::parse(h));
	auto sni_action = [](config::SniPolicy policy) {
		return policy == config::PASSTHROUGH ? SniAction::Passthrough : SniAction::Refuse;
	};
	rs.tls.missing_sni = sni_action(p.tls().missing_sni());
	rs.tls.non_target_sni = sni_action(p.tls().non_target_sni());
	rs.tls.capture_all = p.capture().mode() == config::ALL_TLS;
	rs.tls.hello_timeout = std::chrono::milliseconds(p.tls().hello_timeout_ms());
	rs.tls.handshake_timeout = std::chrono::milliseconds(p.tls().handshake_timeout_ms());
	rs.tls.server_ctx = server_ctx->get();
	rs.tls.client_ctx = client_ctx->get();
	rs.tls.leaves = &leaves;
	rs.tls.limits.max_message = p.tls().max_message_bytes();
	rs.tls.limits.max_unary_body = p.tls().max_message_bytes();
	rs.tls.limits.max_header_bytes = p.tls().max_header_bytes();
	rs.tls.limits.max_streams = p.tls().max_streams_per_connection();
	// Each relayed connection holds two descriptors; refuse cleanly before accept() hits EMFILE.
	if (rlimit lim{}; ::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
		const uint32_t fit = lim.rlim_cur > 256 ? static_cast<uint32_t>((lim.rlim_cur - 256) / 2) : 1;
		if (rs.max_connections > fit) {
			log::warning("daemon.max_connections " + std::to_string(rs.max_connections) + " needs " +
			             std::to_string(2 * rs.max_connections + 256) + " open files but the limit is " +
			             std::to_string(lim.rlim_cur) + ": using " + std::to_string(fit));
			rs.max_connections = fit;
		}
	}
	// The control socket and the watch hub exist before the relay hands the hub to connections.
	Runtime runtime{options, *hierarchy, **own, kp, journal, *ca, leaves};
	ControlServer control(**loop, p.daemon().control_socket(),
	                      [&runtime](const std::string &line, const ControlPeer &peer) {
		                      return runtime.handle_control(line, peer);
	                      });
	std::unique_ptr<proxy::MessageDecoder> decoder;
	if (::access(p.tls().descriptors().c_str(), R_OK) == 0) {
		auto loaded = proxy::MessageDecoder::load(p.tls().descriptors());
		if (!loaded)
			return plain_error("tls.descriptors: " + loaded.error().message());
		decoder = std::move(*loaded);
	} else {
		log::warning("no message descriptors at " + p.tls().descriptors() +
		             ": messages decode by field number only");
		decoder = proxy::MessageDecoder::generic_only();
	}
	WatchHub watch(control, *decoder);
	rs.tls.watch = &watch;
	std::shared_ptr<MaskEngine> masking;
	if (p.mask().enabled()) {
		auto started = Clock::now();
		auto engine = MaskEngine::create(p.mask(), decoder.get());
		if (!engine)
			return engine.error();
		masking = std::move(*engine);
		rs.tls.mask = masking;
		auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
		log::info("masking " + std::to_string(masking->rule_count()) + " secret rules (compiled in " +
		          std::to_string(ms) + " ms)");
	} else {
		log::warning("masking is off (mask.enabled: false): secrets pass to Cursor and back unmasked");
	}
	auto rules = policy::Rules::compile(p);
	if (!rules)
		return plain_error("rules: " + rules.error().message());
	rs.tls.rules = *rules;
	rs.tls.decoder = decoder.get();
	auto verifier = TokenVerifier::create(p.identity());
	if (!verifier)
		return verifier.error();
	runtime.tokens = std::move(*verifier);
	rs.tls.enrollments = &runtime.enrollments;
	runtime.configure_approvals(p.approvals());
	rs.tls.approvals = &runtime.approvals;
	rs.tls.policy_version = policy_version(options.policy_source, p);
	rs.tls.recorder = recorder.get();
	rs.metrics = &metrics;
	log::info(std::to_string((*rules)->size()) + " policy rules; default action " +
	          (p.default_action() == config::Rule::BLOCK ? "block" : "allow"));
	RelayServer relay(**loop, **pool, kp, journal, cgroup_paths, rs);
	if (Status st = relay.start(); !st)
		return st;

	TargetResolver::Settings resolver_settings;
	for (const auto &h : p.capture().hosts())
		if (h.rfind("*.", 0) != 0)
			resolver_settings.names.push_back(h);
	resolver_settings.refresh_min = std::chrono::seconds(p.capture().refresh_min_seconds());
	resolver_settings.refresh_max = std::chrono::seconds(p.capture().refresh_max_seconds());
	resolver_settings.retain = std::chrono::seconds(p.capture().retain_seconds());
	TargetResolver resolver(kp, journal, resolver_settings);
	resolver.inherit(inherited);
	// Live relayed connections keep their destination captured past its TTL and retain time.
	relay.on_destination([&resolver](const IpAddress &ip, bool opened) {
		opened ? resolver.connection_opened(ip) : resolver.connection_closed(ip);
	});

	std::unique_ptr<DnsProxy> dns;
	if (p.capture().dns_proxy()) {
		DnsProxySettings ds;
		ds.listen = {SocketAddress{ks.listen_ipv4, ks.dns_port}, SocketAddress{ks.listen_ipv6, ks.dns_port}};
		if (ks.netns_dns_port != 0)
			ds.listen.push_back(SocketAddress{ks.netns_listen.ip, ks.netns_dns_port});
		if (p.capture().dns_upstream().empty()) {
			auto upstream = system_resolver();
			if (!upstream)
				return plain_error("capture.dns_upstream is empty and " + upstream.error().message());
			ds.upstream = *upstream;
		} else {
			ds.upstream = *SocketAddress::parse(p.capture().dns_upstream());
		}
		ds.upstream_mark = ks.upstream_mark;
		ds.timeout = std::chrono::milliseconds(p.daemon().dns_timeout_ms());
		for (const auto &h : p.capture().hosts())
			ds.hosts.push_back(*HostPattern::parse(h));
		auto created = DnsProxy::create(std::move(ds), kp, resolver);
		if (!created)
			return created.error();
		dns = std::move(*created);
		runtime.dns = dns.get();
	}

	runtime.relay = &relay;
	runtime.resolver = &resolver;
	runtime.pool = pool->get();
	runtime.decoder = decoder.get();
	if (Status st = control.start(); !st)
		return st;
	metrics.watch({&relay, pool->get(), &kp, &journal, &runtime.approvals, recorder.get()});
	runtime.metrics = &metrics;
	// Metrics watch cordond; they are never a reason to stop it. An endpoint that cannot open is
	// reported (log, journal, status) and cordond runs on without it.
	std::optional<MetricsServer> metrics_server;
	if (const std::string &listen = p.daemon().metrics_listen(); !listen.empty()) {
		runtime.metrics_listen = listen;
		metrics_server.emplace(**loop, *ListenEndpoint::parse(listen), [&metrics] { return metrics.render(); });
		if (Status st = metrics_server->start(); !st) {
			runtime.metrics_error = st.error().message();
			JournalEntry e;
			e.priority = 3;
			e.message = "metrics endpoint " + listen +
			            " not opened, cordond runs without it: " + runtime.metrics_error;
			e.add("CORDON_EVENT", "metrics_error")
			    .add("CORDON_METRICS_LISTEN", listen)
			    .add("CORDON_ERROR", runtime.metrics_error);
			log::error(e.message);
			journal.send(std::move(e));
		} else {
			log::info("metrics at " + listen + " (GET /metrics)");
		}
	}

	UniqueFd sfd(::signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC));
	if (!sfd)
		return system_error("signalfd");
	EventLoop &ev = **loop;
	auto &sig = static_cast<SignalHandler &>(ev.add(std::make_unique<SignalHandler>(std::move(sfd), [&](int signo) {
		if (signo == SIGHUP) {
			runtime.reload();
			return;
		}
		log::info(std::string("received ") + strsignal(signo) + ", stopping");
		ev.stop();
	})));
	sig.arm();
	// Enforced cgroups are matched by id, and a restarted service gets a new cgroup (and id) under
	// the same path: follow the paths.
	std::map<uint64_t, uint32_t> current_scopes = scopes;
	auto refresh_scopes = [&] {
		std::map<uint64_t, uint32_t> fresh;
		for (const auto &path : p.enforce().cgroups())
			if (auto id = hierarchy->id_of(path))
				fresh[*id] = CORDON_SCOPE_ENFORCE;
		for (const auto &path : p.enforce().exempt_cgroups())
			if (auto id = hierarchy->id_of(path))
				fresh[*id] = CORDON_SCOPE_EXEMPT;
		fresh[*own_id] = CORDON_SCOPE_EXEMPT;
		if (fresh == current_scopes)
			return;
		if (Status st = kp.set_scopes(fresh); !st)
			return log::error(st.error().message());
		JournalEntry e;
		e.priority = 5;
		e.message = "enforced cgroups changed on disk (created, removed or re-created): scope map updated";
		e.add("CORDON_EVENT", "scope_update").add("CORDON_SCOPES", std::to_string(fresh.size()));
		journal.send(std::move(e));
		current_scopes = std::move(fresh);
	};
	uint64_t ticks = 0;
	// Under systemd's WatchdogSec: a ping from the loop's own ticker, so a loop that stops turning
	// (a deadlock, a stuck handler) stops the pings and systemd restarts cordond.
	uint64_t watchdog_usec = 0;
	const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0;
	if (watchdog)
		log::info("systemd watchdog: pinging every second (WatchdogSec " +
		          std::to_string(watchdog_usec / 1000000) + " s)");
	auto &ticker = static_cast<Ticker &>(ev.add(std::make_unique<Ticker>([&] {
		auto now = Clock::now();
		if (watchdog)
			sd_notify(0, "WATCHDOG=1");
		relay.tick(now);
		control.tick(now);
		runtime.sweep_enrollments();
		runtime.approvals.tick();
		ticks++;
		if (ticks % 2 == 0)
			refresh_scopes();
		if (ticks % 60 == 0) {
			auto swept = kp.sweep_origins(std::chrono::seconds(120));
			if (swept && *swept > 0)
				log::info("swept " + std::to_string(*swept) + " origin entries nobody accepted");
		}
	})));
	ticker.arm();
	ev.set_after_batch([&relay] { relay.resume_starved(); });

	resolver.start();
	std::string listening;
	for (const auto &l : relay.listening())
		listening += (listening.empty() ? "" : ", ") + l.to_string();
	if (dns) {
		dns->start();
		std::string on;
		for (const auto &l : dns->settings().listen)
			on += (on.empty() ? "" : ", ") + l.to_string();
		listening += "; DNS proxy on " + on + " (UDP, TCP) -> " + dns->settings().upstream.to_string();
	}
	log::info("cordond " + std::string(kCordonVersion) + " ready: listening on " + listening + ", control " +
	          control.path());
	sd_notify(0, "READY=1");

	Status result = ev.run();
	sd_notify(0, "STOPPING=1");
	journal.flush();
	if (p.daemon().failure_mode() == config::OPEN) {
		Status st = kp.detach();
		JournalEntry e;
		e.message = st ? "fail-open stop: BPF programs detached, traffic flows unseen until cordond returns"
		               : "fail-open stop: detaching BPF programs failed: " + st.error().message();
		e.add("CORDON_EVENT", "bpf_detach").add("CORDON_PIN_DIR", ks.pin_dir);
		journal.send(std::move(e));
	} else {
		JournalEntry e;
		e.message =
		    "cordond stopped; BPF programs stay attached, captured connections are refused until it returns";
		e.add("CORDON_EVENT", "daemon_stop").add("CORDON_PIN_DIR", ks.pin_dir);
		journal.send(std::move(e));
	}
	journal.flush();
	return result;
}

} // namespace cordon
