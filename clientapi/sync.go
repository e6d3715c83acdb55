package clientapi

func (a *API) registerSync(rt routes) {}
