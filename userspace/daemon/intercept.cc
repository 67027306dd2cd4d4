// An intercepted connection: the job's TLS is terminated with a leaf for its SNI, Cursor's TLS
// is verified in full, and HTTP/2 or HTTP/1.1 flows between them through the message engine.
//
// Order matters: cordond first completes the TLS handshake with Cursor, offering exactly the
// protocols the job offered, and then answers the job's ClientHello with the protocol Cursor
// chose, so both sides always speak the same HTTP version. If Cursor's certificate does not
// verify, the job still gets a TLS session, but every request is answered with a clear error
// that names the reason; nothing is ever sent to an unverified peer.
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <optional>

#include "common/log.h"
#include "daemon/journal.h"
#include "daemon/masking.h"
#include "daemon/metrics.h"
#include "daemon/policy_observer.h"
#include "daemon/recorder.h"
#include "daemon/relay.h"
#include "daemon/watch.h"
#include "proxy/http_bridge.h"
#include "proxy/tls_endpoint.h"
#include "tls/leaf_cache.h"

namespace cordon {

using namespace relay_detail;

namespace {

using Clock = std::chrono::steady_clock;

enum Op : uint8_t {
	kConnect = 1,
	kConnectTimeout,
	kRecvClient,
	kRecvUpstream,
	kSendClient,
	kSendUpstream,
	kCancel,
	kHoldTimer,
	kLingerTimer,
};

constexpr int kClient = 0;
constexpr int kUpstream = 1;
// Ciphertext waiting for a socket beyond this holds back the other side: the bridge produces
// no more, the TLS layer reads no more, flow control does the rest.
constexpr size_t kHighWater = 1 << 20;
constexpr size_t kReadChunk = 256 * 1024;
// After its answer, how much of what the job still sends is read and dropped, and for how long
// (see linger()).
constexpr size_t kLingerBytes = 256 * 1024;
constexpr long kLingerSeconds = 1;

// Journals each HTTP exchange on an intercepted connection.
class RequestJournal : public proxy::ExchangeObserver {
public:
	RequestJournal(Journal &journal, const ConnectionIdentity &id, RelayStats &stats, DaemonMetrics &metrics)
	    : journal_(journal), id_(id), stats_(stats), metrics_(metrics)
	{}
	void set_masker(ConnectionMasker *masker) { masker_ = masker; }
	void set_policy(PolicyObserver *policy) { policy_ = policy; }
	void set_recording(SessionRecording *recording) { recording_ = recording; }

	void on_complete(const proxy::RequestInfo &r, const proxy::ExchangeSummary &s) override
	{
		stats_.requests++;
		JournalEntry e;
		e.priority = s.result == "ok" ? 6 : 4;
		const std::string what =
		    r.rpc.empty() ? r.method + " " + r.path.substr(0, r.path.find('?')) : r.rpc.full();
		const char *protocol = rpc::to_string(s.response.status ? s.response.protocol : r.protocol);
		e.message = "request " + id_.id + "#" + std::to_string(r.number) + ": " + r.host + " " + what + " -> " +
		            std::to_string(s.response.status) + " " + s.result +
		            (s.error.empty() ? "" : " (" + s.error + ")");
		e.add("CORDON_EVENT", "request");
		id_.add_to(e);
		e.add("CORDON_REQUEST", std::to_string(r.number))
		    .add("CORDON_HOST", r.host)
		    .add("CORDON_METHOD", r.method)
		    .add("CORDON_PATH", r.path.substr(0, r.path.find('?')))
		    .add("CORDON_PROTO", protocol)
		    .add("CORDON_HTTP", r.http)
		    .add("CORDON_STATUS", std::to_string(s.response.status))
		    .add("CORDON_REQ_BYTES", std::to_string(s.request_bytes))
		    .add("CORDON_RESP_BYTES", std::to_string(s.response_bytes))
		    .add("CORDON_REQ_MESSAGES", std::to_string(s.request_messages))
		    .add("CORDON_RESP_MESSAGES", std::to_string(s.response_messages))
		    .add("CORDON_DURATION_US", std::to_string(s.duration.count()))
		    .add("CORDON_TTFB_US", std::to_string(s.first_response_byte.count()))
		    .add("CORDON_RESULT", s.result);
		if (!r.rpc.empty())
			e.add("CORDON_RPC", r.rpc.full());
		if (!s.error.empty())
			e.add("CORDON_ERROR", s.error);
		std::optional<policy::Decision> decided;
		if (policy_) {
			const policy::Decision &d = decided.emplace(policy_->take(r.number));
			e.add("CORDON_RULE", d.rule)
			    .add("CORDON_ACTION", policy::to_string(d.action))
			    .add_if("CORDON_APPROVAL_ID", d.approval_id)
			    .add_if("CORDON_APPROVAL", d.approval)
			    .add_if("CORDON_APPROVER", d.approver);
		}
		uint64_t masked = 0, unscanned = 0;
		if (masker_) {
			// Counts and rule ids only: the secrets themselves are never written anywhere.
			MaskTally t = masker_->take(r.number);
			masked = t.masked;
			e.add("CORDON_MASKED", std::to_string(t.masked));
			if (!t.rules.empty()) {
				std::string ids;
				for (const auto &id : t.rules)
					ids += (ids.empty() ? "" : ",") + id;
				e.add("CORDON_MASK_RULES", ids);
			}
			unscanned = t.unscanned;
			if (t.unscanned)
				e.add("CORDON_UNSCANNED", std::to_string(t.unscanned));
		}
		metrics_.request_done(protocol, s.result, decided ? &*decided : nullptr, masked, unscanned, s.duration);
		if (recording_)
			recording_->exchange_done(r, s, decided ? &*decided : nullptr, masked);
		journal_.send(std::move(e));
	}

private:
	Journal &journal_;
	const ConnectionIdentity &id_;
	RelayStats &stats_;
	DaemonMetrics &metrics_;
	ConnectionMasker *masker_ = nullptr;
	PolicyObserver *policy_ = nullptr;
	SessionRecording *recording_ = nullptr;
};

} // namespace

class InterceptConnection : public TrackedConnection {
public:
	InterceptConnection(RelayServer &server, ConnectionIdentity identity, UniqueFd client, std::string hello,
	                    std::vector<std::string> alpn)
	    : server_(server), id_(std::move(identity)), hello_(std::move(hello)), offered_(std::move(alpn)),
	      request_journal_(server.journal_, id_, server.stats_, *server.metrics_)
	{
		if (server.settings_.tls.watch)
			watch_ = std::make_unique<ConnectionWatch>(*server.settings_.tls.watch, id_);
		if (server.settings_.tls.mask) {
			masker_ = std::make_unique<ConnectionMasker>(server.settings_.tls.mask);
			request_journal_.set_masker(masker_.get());
		}
		if (server.settings_.tls.rules) {
			policy::Caller caller{id_.cgroup, id_.user, id_.origin.uid, id_.exe};
			if (id_.enrolled) {
				caller.enrolled = true;
				caller.issuer = id_.enrolled->issuer;
				caller.claims = id_.enrolled->claims;
			}
			ApprovalSubject who;
			who.identity = id_.identity();
			who.cgroup = id_.cgroup;
			who.exe = id_.exe;
			who.user = id_.user;
			who.connection = id_.id;
			policy_ = std::make_unique<PolicyObserver>(server.settings_.tls.rules, std::move(caller),
			                                           server.settings_.tls.decoder,
			                                           server.settings_.tls.approvals, std::move(who));
			request_journal_.set_policy(policy_.get());
		}
		if (Recorder *recorder = server.settings_.tls.recorder) {
			recording_ =
			    std::make_unique<SessionRecording>(*recorder, id_, server.settings_.tls.policy_version);
			request_journal_.set_recording(recording_.get());
		}
		client_ = std::move(client);
		last_activity_ = Clock::now();
		sides_[kClient].fd = &client_;
		sides_[kUpstream].fd = &upstream_;
	}

	void start()
	{
		state_ = "connecting";
		if (int err = connect_.start(loop(), *this, upstream_, id_.destination, server_.settings_.upstream_mark,
		                             server_.settings_.connect_timeout, kConnect, kConnectTimeout))
			return fail("error", err, true);
	}

	void on_completion(uint8_t op, int res, uint32_t flags) override
	{
		switch (op) {
		case kConnect:
			return on_connected(res);
		case kConnectTimeout:
		case kCancel:
			return;
		case kHoldTimer:
			return on_hold_timer();
		case kLingerTimer:
			linger_armed_ = false;
			return finish_lingering(false);
		case kRecvClient:
			return on_received(kClient, res, flags);
		case kRecvUpstream:
			return on_received(kUpstream, res, flags);
		case kSendClient:
			return on_sent(kClient, res);
		case kSendUpstream:
			return on_sent(kUpstream, res);
		default:
			log::error("intercept: unexpected completion op " + std::to_string(op));
		}
	}

	void on_stop() override { fail("shutdown", 0, true); }

	void on_retire() override
	{
		if (abortive_) {
			reset_on_close(client_.get());
			reset_on_close(upstream_.get());
		}
		client_.reset();
		upstream_.reset();
		journal_close();
		server_.forget(this);
	}

	void check_timeouts(Clock::time_point now) override
	{
		if (finished())
			return;
		if (!bridge_ && now - id_.started > server_.settings_.tls.handshake_timeout)
			return fail("handshake_timeout", ETIMEDOUT, true);
		auto idle = server_.settings_.idle_timeout;
		if (idle.count() > 0 && now - last_activity_ > idle)
			fail("idle_timeout", 0, true);
	}

	void resume(int side) override
	{
		if (finished() || !sides_[side].starved)
			return;
		sides_[side].starved = false;
		drive();
	}

	ConnectionInfo info(Clock::time_point now) const override
	{
		ConnectionInfo i;
		i.id = id_.id;
		i.pid = id_.origin.tgid;
		i.uid = id_.origin.uid;
		i.gid = id_.origin.gid;
		i.comm = id_.comm();
		i.cgroup = id_.cgroup;
		i.client = id_.client.to_string();
		i.destination = id_.destination.to_string();
		i.upstream_local = upstream_local_;
		i.state = state_;
		i.mode = "intercept";
		i.sni = id_.sni;
		i.alpn = alpn_;
		i.bytes_up = sides_[kUpstream].bytes_out;
		i.bytes_down = sides_[kClient].bytes_out;
		i.requests = bridge_ ? bridge_->exchanges() : 0;
		i.age_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - id_.started).count();
		return i;
	}

private:
	struct Side {
		UniqueFd *fd = nullptr;
		bool recv_armed = false, send_armed = false;
		bool eof = false, eof_delivered = false, starved = false;
		std::deque<std::string> out; // ciphertext to send
		size_t out_offset = 0, out_bytes = 0;
		uint64_t bytes_in = 0, bytes_out = 0;
	};

	void on_connected(int res)
	{
		if (finished())
			return;
		if (res < 0) {
			server_.stats_.upstream_failed++;
			const char *result = res == -ECANCELED      ? "upstream_timeout"
			                     : res == -ECONNREFUSED ? "upstream_refused"
			                                            : "upstream_unreachable";
			return fail(result, res == -ECANCELED ? ETIMEDOUT : -res, true);
		}
		if (auto local = local_address(upstream_.get()))
			upstream_local_ = local->to_string();
		// Offer Cursor exactly what the job offered (of what cordon speaks).
		std::vector<std::string> alpn;
		for (const auto &p : offered_)
			if (p == "h2" || p == "http/1.1")
				alpn.push_back(p);
		if (alpn.empty())
			alpn.push_back("http/1.1");
		auto tls = proxy::TlsEndpoint::client(server_.settings_.tls.client_ctx, id_.sni, alpn);
		if (!tls)
			return fail("error", 0, true, tls.error().message());
		upstream_tls_ = std::move(*tls);
		state_ = "upstream_handshake";
		drive();
	}

	void start_client_tls(const std::string &alpn_choice)
	{
		auto leaf = server_.settings_.tls.leaves->get(id_.sni);
		if (!leaf)
			return fail("error", 0, true,
			            "mint a certificate for " + id_.sni + ": " + leaf.error().message());
		leaf_ = *leaf;
		auto tls = proxy::TlsEndpoint::server(server_.settings_.tls.server_ctx, leaf_->certificate.get(),
		                                      leaf_->key.get(), alpn_choice);
		if (!tls)
			return fail("error", 0, true, tls.error().message());
		client_tls_ = std::move(*tls);
		// The ClientHello was read while deciding; it is the start of this handshake.
		Status st = client_tls_->feed({reinterpret_cast<const uint8_t *>(hello_.data()), hello_.size()});
		hello_.clear();
		if (!st)
			return fail("error", 0, true, st.error().message());
		state_ = "client_handshake";
	}

	void start_bridge()
	{
		proxy::BridgeSettings bs;
		bs.connection = id_.id;
		bs.default_host = id_.sni;
		// Masking first: every observer after it sees masked data only.
		if (masker_)
			bs.observers.push_back(masker_.get());
		bs.observers.push_back(&request_journal_);
		if (watch_)
			bs.observers.push_back(watch_.get());
		// After masking (it records masked data), before the policy (an injected credential never
		// reaches a recording).
		if (recording_)
			bs.observers.push_back(recording_.get());
		// After watch, so a message the policy blocks is still shown.
		if (policy_)
			bs.observers.push_back(policy_.get());
		for (auto *o : server_.settings_.tls.observers)
			bs.observers.push_back(o);
		bs.limits = server_.settings_.tls.limits;
		bs.upstream_unavailable = upstream_error_;
		if (Recorder *recorder = server_.settings_.tls.recorder;
		    recorder && !recorder->accepting() && bs.upstream_unavailable.empty())
			// Traffic nobody could audit does not flow: the job gets its protocol's error.
			bs.upstream_unavailable = "cordon: session recording is failing (" + recorder->failure() +
			                          "); new sessions are refused";
		const std::string chosen = client_tls_->alpn_selected();
		if (chosen == "h2") {
			Status st;
			bridge_ = proxy::make_h2_bridge(std::move(bs), &st);
			if (!bridge_)
				return fail("error", 0, true, st.error().message());
		} else {
			bridge_ = proxy::make_h1_bridge(std::move(bs));
		}
		alpn_ = chosen.empty() ? "http/1.1" : chosen;
		state_ = "proxying";
		if (recording_)
			recording_->start(alpn_);
	}

	// Moves everything as far as it can go. Called after every completion.
	void drive()
	{
		if (finished() || lingering_)
			return;
		if (upstream_tls_ && !upstream_tls_->established() && upstream_error_.empty() && !client_tls_) {
			auto step = upstream_tls_->handshake();
			flush(kUpstream, *upstream_tls_);
			if (step == proxy::TlsEndpoint::Step::Done) {
				tls_version_ = upstream_tls_->version();
				std::string chosen = upstream_tls_->alpn_selected();
				start_client_tls(chosen.empty() ? "http/1.1" : chosen);
			} else if (step == proxy::TlsEndpoint::Step::Failed) {
				upstream_failed(upstream_tls_->error());
			}
		}
		if (finished())
			return;
		if (client_tls_ && !client_tls_->established()) {
			auto step = client_tls_->handshake();
			flush(kClient, *client_tls_);
			if (step == proxy::TlsEndpoint::Step::Done)
				start_bridge();
			else if (step == proxy::TlsEndpoint::Step::Failed)
				return fail("client_tls_failed", 0, true, client_tls_failure(client_tls_->error()));
		}
		if (finished())
			return;
		// Once both close_notify alerts are queued nothing more moves: a TLS write after one fails
		// ("protocol is shutdown"), and that failure reset the connection under the answer still
		// queued for the job (an HTTP/2 GOAWAY, lost 1 time in 6 once the upstream's SETTINGS
		// arrived after the close).
		if (bridge_ && !closing_)
			move_data();
		if (finished())
			return;
		arm(kClient);
		arm(kUpstream);
		arm_hold_timer();
		if (bridge_ && bridge_->done() && !closing_) {
			closing_ = true;
			client_tls_->close_notify();
			flush(kClient, *client_tls_);
			if (upstream_tls_ && upstream_tls_->established()) {
				upstream_tls_->close_notify();
				flush(kUpstream, *upstream_tls_);
			}
		}
		if (closing_ && sides_[kClient].out.empty() && !sides_[kClient].send_armed) {
			if (!sides_[kClient].eof && linger())
				return;
			fail(result_.empty() ? "ok" : result_.c_str(), 0, false);
		}
	}

	// The whole answer is out, close_notify included, but the job has not closed: it may still
	// be writing a request body it began before the answer came (HTTP/1.1 "Connection: close"
	// after a 502, a 431 or a refusal). Closing now would reset the connection, and the job
	// could lose the answer: it saw EPIPE instead of a 502 in CI. So: FIN, then read and drop
	// until the job closes, up to kLingerBytes or kLingerSeconds (RFC 9112 §9.6).
	bool linger()
	{
		if (::shutdown(client_.get(), SHUT_WR) != 0)
			return false;
		lingering_ = true;
		state_ = "lingering";
		linger_left_ = kLingerBytes;
		linger_timeout_ = {kLingerSeconds, 0};
		io_uring_prep_timeout(loop().prepare(*this, kLingerTimer), &linger_timeout_, 0, 0);
		linger_armed_ = true;
		arm_linger_recv();
		return true;
	}

	void arm_linger_recv()
	{
		Side &s = sides_[kClient];
		if (s.recv_armed || finished())
			return;
		submit_recv(kClient);
	}

	// What the job sent after the answer: dropped. `res` as from recv.
	void on_lingering_recv(int res)
	{
		if (res > 0 && static_cast<size_t>(res) < linger_left_) {
			linger_left_ -= static_cast<size_t>(res);
			last_activity_ = Clock::now();
			return arm_linger_recv();
		}
		// The job closed (or failed, or ran the pool dry), or keeps sending more than cordond
		// reads for it: the latter is reset.
		finish_lingering(res > 0);
	}

	void finish_lingering(bool abortive)
	{
		if (!finished())
			fail(result_.empty() ? "ok" : result_.c_str(), 0, abortive);
	}

	// Moves data until nothing moves: everything fed to the TLS layers is consumed (a completion
	// must never leave plaintext stranded in a BIO with nothing left to wake the loop), as far as
	// the bridge wants it and the sockets keep up.
	void move_data()
	{
		for (int round = 0; round < 256 && !finished(); round++) {
			bool progress = false;
			if (!pull(kClient, progress) || !pull(kUpstream, progress) || !push(kClient, progress) ||
			    !push(kUpstream, progress))
				return;
			if (!progress)
				return;
		}
	}

	// TLS plaintext from one side into the bridge; false when the connection failed.
	bool pull(int side, bool &progress)
	{
		proxy::TlsEndpoint *tls = side == kClient ? client_tls_.get() : upstream_tls_.get();
		if (!tls || !tls->established() || (side == kUpstream && upstream_gone_))
			return true;
		const int other = side == kClient ? kUpstream : kClient;
		const bool wants = side == kClient ? bridge_->wants_client_data() : bridge_->wants_upstream_data();
		if (wants && sides_[other].out_bytes < kHighWater) {
			std::string plain;
			const bool open = tls->read(plain, kReadChunk);
			if (!plain.empty()) {
				progress = true;
				auto data = std::span<const uint8_t>(reinterpret_cast<const uint8_t *>(plain.data()),
				                                     plain.size());
				Status st =
				    side == kClient ? bridge_->on_client_data(data) : bridge_->on_upstream_data(data);
				if (!st) {
					fail(side == kClient ? "client_protocol_error" : "upstream_protocol_error", 0,
					     true, st.error().message());
					return false;
				}
			}
			if (!open && tls->failed()) {
				// A TLS error is not an end of stream: the peer's copy must not look complete.
				fail(side == kClient ? "client_reset" : "upstream_reset", 0, true, tls->error());
				return false;
			}
		}
		// EOF only once everything before it went through: close_notify, or the socket's FIN
		// with nothing left buffered.
		Side &s = sides_[side];
		const bool ended = tls->peer_closed() || (s.eof && !tls->has_buffered_input());
		if (ended && !s.eof_delivered && !tls->has_buffered_input()) {
			s.eof_delivered = true;
			progress = true;
			if (side == kClient)
				bridge_->on_client_eof();
			else
				bridge_->on_upstream_eof(tls->peer_closed());
		}
		return true;
	}

	// Bridge output to one side, as far as that socket keeps up; false when the connection failed.
	bool push(int side, bool &progress)
	{
		proxy::TlsEndpoint *tls = side == kClient ? client_tls_.get() : upstream_tls_.get();
		if (!tls || !tls->established() || (side == kUpstream && upstream_gone_))
			return true;
		if (sides_[side].out_bytes >= kHighWater)
			return true;
		std::string plain;
		Status st = side == kClient
		                ? bridge_->produce_client_output(plain, kHighWater - sides_[side].out_bytes)
		                : bridge_->produce_upstream_output(plain, kHighWater - sides_[side].out_bytes);
		if (!st) {
			fail(side == kClient ? "client_protocol_error" : "upstream_protocol_error", 0, true,
			     st.error().message());
			return false;
		}
		if (!plain.empty()) {
			progress = true;
			(void)tls->write({reinterpret_cast<const uint8_t *>(plain.data()), plain.size()});
		}
		flush(side, *tls);
		return true;
	}

	// Masking holds a streamed message back while the next one may complete a secret it ends
	// with; if nothing follows in time, the message goes as it is. One timer per connection, for
	// the earliest deadline.
	void arm_hold_timer()
	{
		if (!bridge_ || closing_)
			return;
		auto due = bridge_->hold_deadline();
		if (!due)
			return;
		// Armed already: only an earlier deadline moves the timer (an HTTP/2 wake-up can come
		// before a drain that started earlier ends).
		if (hold_armed_ && *due + std::chrono::milliseconds(1) >= hold_due_)
			return;
		auto wait = std::chrono::duration_cast<std::chrono::nanoseconds>(*due - Clock::now());
		if (wait.count() < 1000000)
			wait = std::chrono::nanoseconds(1000000);
		hold_timeout_.tv_sec = wait.count() / 1000000000;
		hold_timeout_.tv_nsec = wait.count() % 1000000000;
		hold_due_ = *due;
		if (hold_armed_)
			return loop().update_timeout(*this, kHoldTimer, &hold_timeout_, kCancel);
		io_uring_prep_timeout(loop().prepare(*this, kHoldTimer), &hold_timeout_, 0, 0);
		hold_armed_ = true;
	}

	void on_hold_timer()
	{
		hold_armed_ = false;
		if (finished() || !bridge_)
			return;
		if (Status st = bridge_->release_held(Clock::now()); !st)
			return fail("client_protocol_error", 0, true, st.error().message());
		drive();
	}

	// Cursor's certificate did not verify (or its TLS failed): never talk to it, tell the job.
	void upstream_failed(const std::string &why)
	{
		upstream_error_ = "cordon: " + why + " (" + id_.sni + " at " + id_.destination.to_string() + ")";
		JournalEntry e;
		e.priority = 3;
		e.message = "upstream TLS failed for " + id_.id + ": " + why;
		e.add("CORDON_EVENT", "upstream_tls_error");
		id_.add_to(e);
		e.add("CORDON_ERROR", why);
		server_.journal_.send(std::move(e));
		result_ = "upstream_tls_failed";
		reason_ = why;
		// Close the upstream socket now; the job gets its answer from cordon itself.
		if (sides_[kUpstream].recv_armed || sides_[kUpstream].send_armed)
			loop().cancel_fd(*this, upstream_.get(), kCancel);
		upstream_gone_ = true;
		bool h2 = std::find(offered_.begin(), offered_.end(), "h2") != offered_.end();
		start_client_tls(h2 ? "h2" : "http/1.1");
	}

	std::string client_tls_failure(const std::string &openssl) const
	{
		if (openssl.find("unknown ca") != std::string::npos ||
		    openssl.find("bad certificate") != std::string::npos ||
		    openssl.find("certificate unknown") != std::string::npos)
			return "the job rejected cordon's certificate (is the cordon CA installed? cordonctl ca "
			       "install): " +
			       openssl;
		return openssl;
	}

	void flush(int side, proxy::TlsEndpoint &tls)
	{
		std::string cipher;
		tls.take_ciphertext(cipher);
		if (cipher.empty())
			return;
		Side &s = sides_[side];
		s.out_bytes += cipher.size();
		s.out.push_back(std::move(cipher));
		send_next(side);
	}

	void send_next(int side)
	{
		Side &s = sides_[side];
		if (s.send_armed || s.out.empty() || finished())
			return;
		if (side == kUpstream && upstream_gone_) {
			s.out.clear();
			s.out_bytes = 0;
			return;
		}
		const std::string &front = s.out.front();
		io_uring_prep_send(loop().prepare(*this, side == kClient ? kSendClient : kSendUpstream), s.fd->get(),
		                   front.data() + s.out_offset, front.size() - s.out_offset, MSG_NOSIGNAL);
		s.send_armed = true;
	}

	void on_sent(int side, int res)
	{
		Side &s = sides_[side];
		s.send_armed = false;
		if (finished())
			return;
		if (res <= 0) {
			if (side == kUpstream && upstream_gone_)
				return;
			return fail(side == kClient ? "client_reset" : "upstream_reset", res == 0 ? EPIPE : -res, true);
		}
		s.out_offset += static_cast<size_t>(res);
		s.out_bytes -= static_cast<size_t>(res);
		s.bytes_out += static_cast<uint64_t>(res);
		server_.metrics_->add_bytes(side == kUpstream, static_cast<uint64_t>(res));
		if (s.out_offset == s.out.front().size()) {
			s.out.pop_front();
			s.out_offset = 0;
		}
		last_activity_ = Clock::now();
		send_next(side);
		drive();
	}

	void arm(int side)
	{
		Side &s = sides_[side];
		if (s.recv_armed || s.eof || s.starved || finished())
			return;
		if (side == kUpstream && (upstream_gone_ || !upstream_tls_))
			return;
		// Not before the job's TLS session exists (its bytes would have nowhere to go), and not
		// while earlier ciphertext is still unread: TCP then holds the sender back.
		proxy::TlsEndpoint *tls = side == kClient ? client_tls_.get() : upstream_tls_.get();
		if (!tls || (bridge_ && tls->has_buffered_input()))
			return;
		// Read only what the other side can take (the bridge tells when it is full).
		const int other = side == kClient ? kUpstream : kClient;
		if (sides_[other].out_bytes >= kHighWater)
			return;
		if (bridge_ && !(side == kClient ? bridge_->wants_client_data() : bridge_->wants_upstream_data()))
			return;
		submit_recv(side);
	}

	// One receive into a buffer the kernel picks from the pool.
	void submit_recv(int side)
	{
		Side &s = sides_[side];
		io_uring_sqe *sqe = loop().prepare(*this, side == kClient ? kRecvClient : kRecvUpstream);
		io_uring_prep_recv(sqe, s.fd->get(), nullptr, server_.pool_.buffer_size(), 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = server_.pool_.group();
		s.recv_armed = true;
	}

	void on_received(int side, int res, uint32_t flags)
	{
		Side &s = sides_[side];
		s.recv_armed = false;
		const bool has_buffer = flags & IORING_CQE_F_BUFFER;
		const uint16_t bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
		if (has_buffer)
			server_.pool_.taken();
		if (lingering_) {
			if (has_buffer)
				server_.pool_.recycle(bid);
			if (side == kClient && !finished())
				on_lingering_recv(res);
			return;
		}
		if (res > 0 && has_buffer && !finished()) {
			// Into the TLS layer, and the buffer straight back to the kernel.
			proxy::TlsEndpoint *tls = side == kClient ? client_tls_.get() : upstream_tls_.get();
			Status st = tls ? tls->feed({server_.pool_.data(bid), static_cast<size_t>(res)})
			                : plain_error("data before TLS");
			server_.pool_.recycle(bid);
			if (!st)
				return fail("error", 0, true, st.error().message());
			s.bytes_in += static_cast<uint64_t>(res);
			last_activity_ = Clock::now();
			return drive();
		}
		if (has_buffer)
			server_.pool_.recycle(bid);
		if (finished() || (side == kUpstream && upstream_gone_))
			return;
		if (res == -ENOBUFS) {
			s.starved = true;
			return server_.starve(this, side);
		}
		if (res == 0) {
			s.eof = true;
			if (!bridge_)
				return fail(side == kClient ? "client_closed" : "upstream_closed", 0, false,
				            side == kClient ? "the job closed during the TLS handshake"
				                            : "upstream closed during the TLS handshake");
			return drive();
		}
		fail(side == kClient ? "client_reset" : "upstream_reset", -res, true);
	}

	void fail(const char *result, int error, bool abortive, const std::string &reason = "")
	{
		if (finished())
			return;
		result_ = result;
		error_ = error;
		abortive_ = abortive;
		if (!reason.empty())
			reason_ = reason;
		state_ = "closing";
		if (inflight() > 0) {
			if (client_)
				loop().cancel_fd(*this, client_.get(), kCancel);
			if (upstream_)
				loop().cancel_fd(*this, upstream_.get(), kCancel);
			if (hold_armed_)
				loop().cancel_op(*this, kHoldTimer, kCancel);
			if (linger_armed_)
				loop().cancel_op(*this, kLingerTimer, kCancel);
		}
		mark_finished();
	}

	void journal_close()
	{
		auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - id_.started).count();
		JournalEntry e;
		e.priority = (result_ == "ok" || result_ == "shutdown") ? 6 : 4;
		char duration[32];
		std::snprintf(duration, sizeof(duration), "%.1f ms", static_cast<double>(us) / 1000.0);
		const uint64_t requests = bridge_ ? bridge_->exchanges() : 0;
		e.message = "close " + id_.id + ": " + result_ + ", intercepted " + id_.sni + " (" + alpn_ + "), " +
		            std::to_string(requests) + " requests, " + human_bytes(sides_[kUpstream].bytes_out) +
		            " up, " + human_bytes(sides_[kClient].bytes_out) + " down, " + duration;
		if (!reason_.empty())
			e.message += " (" + reason_ + ")";
		else if (error_)
			e.message += " (" + std::string(std::strerror(error_)) + ")";
		e.add("CORDON_EVENT", "connection_close").add("CORDON_MODE", "intercept");
		id_.add_to(e);
		e.add("CORDON_UPSTREAM_LOCAL", upstream_local_)
		    .add("CORDON_BYTES_UP", std::to_string(sides_[kUpstream].bytes_out))
		    .add("CORDON_BYTES_DOWN", std::to_string(sides_[kClient].bytes_out))
		    .add("CORDON_DURATION_US", std::to_string(us))
		    .add("CORDON_REQUESTS", std::to_string(requests))
		    .add("CORDON_ALPN", alpn_)
		    .add("CORDON_RESULT", result_);
		if (!tls_version_.empty())
			e.add("CORDON_TLS_UPSTREAM", tls_version_);
		if (!reason_.empty())
			e.add("CORDON_REASON", reason_);
		if (error_)
			e.add("CORDON_ERRNO", std::to_string(error_)).add("CORDON_ERROR", std::strerror(error_));
		server_.journal_.send(std::move(e));
		server_.stats_.closed++;
		server_.metrics_->connection_closed(result_);
		if (recording_)
			recording_->end(result_, sides_[kUpstream].bytes_out, sides_[kClient].bytes_out, requests);
	}

	RelayServer &server_;
	ConnectionIdentity id_;
	std::string hello_;
	std::vector<std::string> offered_;
	std::unique_ptr<ConnectionMasker> masker_;
	std::unique_ptr<PolicyObserver> policy_;
	std::unique_ptr<SessionRecording> recording_;
	RequestJournal request_journal_;
	std::unique_ptr<ConnectionWatch> watch_;
	UniqueFd client_, upstream_;
	Side sides_[2];
	std::unique_ptr<proxy::TlsEndpoint> client_tls_, upstream_tls_;
	std::shared_ptr<const tls::Leaf> leaf_;
	std::unique_ptr<proxy::HttpBridge> bridge_;
	std::string upstream_local_, alpn_, tls_version_;
	std::string upstream_error_; // set when Cursor's TLS failed: requests are answered locally
	bool upstream_gone_ = false;
	bool closing_ = false;
	std::string state_ = "accepted";
	std::string result_, reason_;
	int error_ = 0;
	bool abortive_ = false;
	UpstreamConnect connect_;
	__kernel_timespec hold_timeout_{};
	bool hold_armed_ = false;
	Clock::time_point hold_due_;                    // when the armed hold timer fires
	bool lingering_ = false, linger_armed_ = false; // see linger()
	size_t linger_left_ = 0;
	__kernel_timespec linger_timeout_{};
	Clock::time_point last_activity_;
};

void RelayServer::start_intercept(ConnectionIdentity identity, UniqueFd client, std::string hello_bytes,
                                  std::vector<std::string> alpn)
{
	const IpAddress destination = identity.destination.ip;
	auto conn = std::make_unique<InterceptConnection>(*this, std::move(identity), std::move(client),
	                                                  std::move(hello_bytes), std::move(alpn));
	InterceptConnection *raw = conn.get();
	live_.insert(raw);
	track_destination(raw, destination);
	loop_.add(std::move(conn));
	raw->start();
}

} // namespace cordon
