package appservice

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	transactions *prometheus.CounterVec
	events       *prometheus.CounterVec
	failures     *prometheus.CounterVec
	lag          *prometheus.HistogramVec
}

// newMetrics registers the per-appservice metrics. Queue depth and the age
// of the oldest undelivered event are read from the database when scraped.
func newMetrics(d *Deliverer, reg prometheus.Registerer) *metrics {
	m := &metrics{
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentspace_appservice_transactions_total", Help: "Transactions delivered (2xx) per appservice.",
		}, []string{"appservice"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentspace_appservice_events_total", Help: "Room events delivered per appservice.",
		}, []string{"appservice"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentspace_appservice_failures_total", Help: "Failed delivery attempts per appservice.",
		}, []string{"appservice"}),
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "agentspace_appservice_delivery_lag_seconds", Help: "Time from an event's origin_server_ts to its delivery.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30, 300},
		}, []string{"appservice"}),
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.transactions, m.events, m.failures, m.lag)
	for _, r := range d.registry.list {
		id := r.ID
		backlog := func() (count, oldestTS int64) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := d.db.AppserviceState(ctx, id, d.rooms.Notifier().Latest())
			if err != nil {
				return 0, 0
			}
			count, oldestTS, _ = d.db.EventBacklog(ctx, st.DeliveredPos)
			return count, oldestTS
		}
		labels := prometheus.Labels{"appservice": id}
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "agentspace_appservice_queue_depth", Help: "Stream events not yet processed for the appservice.", ConstLabels: labels,
		}, func() float64 {
			n, _ := backlog()
			return float64(n)
		}))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "agentspace_appservice_oldest_undelivered_age_seconds", Help: "Age of the oldest event not yet processed for the appservice.", ConstLabels: labels,
		}, func() float64 {
			_, ts := backlog()
			if ts == 0 {
				return 0
			}
			return max(time.Since(time.UnixMilli(ts)).Seconds(), 0)
		}))
	}
	return m
}
