package engine

// Question caps: how many questions may be open at once, shared fairly.
//
// A question holds connections in the kernel and takes a person's attention, so their
// number is bounded. One bound for the whole machine alone would let one program (any
// unprivileged user can open a thousand connections) take every question and make every
// other program's new connection get the default unasked. So there are three bounds:
//
//   - per program (Config.MaxPromptsPerApp, default 64): the open questions of one
//     executable run by one user. A program at its bound gets the default at once for
//     a new destination (ReasonQuestionCap); its open questions stay.
//   - per user (Config.MaxPromptsPerUser, default 256): the open questions of all of
//     one user's programs together.
//   - global (Config.MaxPrompts, default 1024).
//
// The per-user and the global bounds are shared max-min fairly: when one is reached, a
// newcomer that holds fewer questions than the heaviest holder (by at least two, so the
// exchange never makes things less even) takes the place of that holder's newest
// question, which gets the default at once (ReasonQuestionCap, counted as "evicted").
// The heaviest holder keeps its older questions, those a person has had longest to see.
// At the global bound the heaviest holder is the user with the most open questions
// (and within it, its program with the most); at a user's bound it is that user's
// program with the most. Only a newcomer already holding as many questions as the
// heaviest is refused. So a program or user flooding questions can never push another
// below an equal share, and a program with no open question always gets one as long
// as some other holds two or more.
//
// Programs are told apart by their executable path as the request names it, with its
// identity and container, per user: one user's flood of /usr/bin/curl questions never
// counts against another user's curl, and a forger's flood under the path
// /usr/bin/curl (unverified) never counts against the verified curl of the same user. Requests whose user is unknown count as one user, those whose executable is
// unknown as one program.

// Default question bounds (Config.MaxPrompts, MaxPromptsPerUser, MaxPromptsPerApp).
const (
	DefaultMaxPrompts        = 1024
	DefaultMaxPromptsPerUser = 256
	DefaultMaxPromptsPerApp  = 64
)

// CapKind says which question bound refused or evicted a question.
type CapKind string

// Cap kinds, as QuestionCapStats counts them.
const (
	CapApp    CapKind = "app"    // the program had its maximum of questions open
	CapUser   CapKind = "user"   // the user had its maximum open, and this program its fair share of it
	CapGlobal CapKind = "global" // the machine had its maximum open, and this user and program their fair share
)

// QuestionCapStats are the question bounds in force and how often they applied.
type QuestionCapStats struct {
	Max     int `json:"max"`      // open questions at most (Config.MaxPrompts)
	PerUser int `json:"per_user"` // per user (Config.MaxPromptsPerUser)
	PerApp  int `json:"per_app"`  // per program and user (Config.MaxPromptsPerApp)
	// Connections that got the default at once, without a question, by the bound that
	// applied.
	App    uint64 `json:"app"`
	User   uint64 `json:"user"`
	Global uint64 `json:"global"`
	// Evicted counts open questions closed early (the default, ReasonQuestionCap) to
	// make room for a program or user holding fewer.
	Evicted uint64 `json:"evicted"`
}

// userKey identifies a user for the question bounds: the uid when known, else the
// account name (Windows), else "unknown".
type userKey struct {
	uid  int32
	name string
}

func userKeyOf(req *Request) userKey {
	if req.UID >= 0 {
		return userKey{uid: req.UID}
	}
	return userKey{uid: -1, name: req.User}
}

// userLoad is one user's open questions, by program.
type userLoad struct {
	n    int
	apps map[appKey]*appLoad
}

// appKey is a program as the question bounds count it: a forger running under the
// path of a real program (unverified), or a container's program of the same path,
// is another program than the host's verified one, and does not spend its bound.
type appKey struct {
	exe       string
	identity  Identity
	container string
}

func appKeyOf(k promptKey) appKey {
	return appKey{exe: k.exe, identity: k.identity, container: k.container}
}

// appLoad is one program's open questions (of one user), oldest first.
type appLoad struct {
	prompts []*prompt
}

// heaviest returns the user's program with the most open questions.
func (u *userLoad) heaviest() *appLoad {
	var h *appLoad
	for _, a := range u.apps {
		if h == nil || len(a.prompts) > len(h.prompts) {
			h = a
		}
	}
	return h
}

// loadOf returns the counts of the user and the program a request belongs to.
func (e *Engine) loadOf(uk userKey, app appKey) (u *userLoad, userN, appN int) {
	u = e.users[uk]
	if u == nil {
		return nil, 0, 0
	}
	if a := u.apps[app]; a != nil {
		appN = len(a.prompts)
	}
	return u, u.n, appN
}

// admitLocked decides whether a new question from user uk's program app may open. It
// returns the question to evict to make room (nil: none needed), or the bound that
// refuses it. Call with mu held.
func (e *Engine) admitLocked(uk userKey, app appKey) (evict *prompt, refused CapKind) {
	u, userN, appN := e.loadOf(uk, app)
	if appN >= e.cfg.MaxPromptsPerApp {
		return nil, CapApp
	}
	if userN >= e.cfg.MaxPromptsPerUser {
		// The user's programs share its bound: take from its heaviest program.
		if h := u.heaviest(); h != nil && appN+1 < len(h.prompts) {
			return h.prompts[len(h.prompts)-1], ""
		}
		return nil, CapUser
	}
	if len(e.byID) >= e.cfg.MaxPrompts {
		var hu *userLoad
		for _, x := range e.users {
			if hu == nil || x.n > hu.n {
				hu = x
			}
		}
		if hu != nil && hu != u && userN+1 < hu.n {
			h := hu.heaviest()
			return h.prompts[len(h.prompts)-1], ""
		}
		// This user holds as many as any other: its own programs share what it has.
		if u != nil {
			if h := u.heaviest(); h != nil && appN+1 < len(h.prompts) {
				return h.prompts[len(h.prompts)-1], ""
			}
		}
		return nil, CapGlobal
	}
	return nil, ""
}

// addLoadLocked counts p as open. Call with mu held.
func (e *Engine) addLoadLocked(p *prompt) {
	u := e.users[p.user]
	if u == nil {
		u = &userLoad{apps: map[appKey]*appLoad{}}
		e.users[p.user] = u
	}
	a := u.apps[appKeyOf(p.key)]
	if a == nil {
		a = &appLoad{}
		u.apps[appKeyOf(p.key)] = a
	}
	a.prompts = append(a.prompts, p)
	u.n++
}

// dropLoadLocked stops counting p as open. Call with mu held.
func (e *Engine) dropLoadLocked(p *prompt) {
	u := e.users[p.user]
	if u == nil {
		return
	}
	a := u.apps[appKeyOf(p.key)]
	if a == nil {
		return
	}
	for i, x := range a.prompts {
		if x == p {
			a.prompts = append(a.prompts[:i], a.prompts[i+1:]...)
			u.n--
			break
		}
	}
	if len(a.prompts) == 0 {
		delete(u.apps, appKeyOf(p.key))
	}
	if u.n == 0 {
		delete(e.users, p.user)
	}
}

// countCap counts a bound applying.
func (e *Engine) countCap(k CapKind) {
	switch k {
	case CapApp:
		e.capApp.Add(1)
	case CapUser:
		e.capUser.Add(1)
	case CapGlobal:
		e.capGlobal.Add(1)
	}
}
