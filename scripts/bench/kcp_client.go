// kcp_client -- a client of the gateway's packet format (size u32 |
// header u8 | route i16 | seq i16 | data, big endian: the default layout)
// over KCP (kcp-go, no FEC, no encryption) or TCP. Built offline by the
// KCP integration test and by scripts/bench/run-kcp against Debian's
// golang-github-xtaci-kcp-dev. Modes:
//
//	echo: send -n packets with data "<prefix><i>" on -route (1) and print
//	      each reply as "reply ROUTE SEQ DATA" (the Lua echo script answers
//	      "echo:..."); with -hb a heartbeat goes first and its answer is
//	      printed as "heartbeat"; -pad N appends N bytes to each packet's
//	      data ("/" then 'a'+(i+k)%26 for k < N-1), and -digest prints
//	      "reply ROUTE SEQ LEN SHA256-HEX-OF-DATA" instead of the data
//	bench: -n round trips of -size bytes with up to -window outstanding;
//	      prints one JSON line with throughput and latency percentiles
//
// With -snmp the last line is "snmp {...}": kcp-go's own counters (segments
// sent again, lost, duplicated) as JSON.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"time"

	kcp "github.com/xtaci/kcp-go"
)

func packet(route, seq int16, data []byte) []byte {
	b := make([]byte, 4+1+2+2+len(data))
	binary.BigEndian.PutUint32(b, uint32(5+len(data)))
	b[4] = 0
	binary.BigEndian.PutUint16(b[5:], uint16(route))
	binary.BigEndian.PutUint16(b[7:], uint16(seq))
	copy(b[9:], data)
	return b
}

type reply struct {
	heartbeat bool
	route     int16
	seq       int16
	data      []byte
}

func readPacket(r *bufio.Reader) (reply, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return reply{}, err
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if size < 1 || size > 1<<24 {
		return reply{}, fmt.Errorf("bad size %d", size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		return reply{}, err
	}
	if body[0]&0x80 != 0 {
		return reply{heartbeat: true}, nil
	}
	if size < 5 {
		return reply{}, fmt.Errorf("short packet %d", size)
	}
	return reply{route: int16(binary.BigEndian.Uint16(body[1:])),
		seq: int16(binary.BigEndian.Uint16(body[3:])), data: body[5:]}, nil
}

func dial(proto, addr string, nodelay bool, interval, resend int, nc bool, wnd, mtu int) (net.Conn, error) {
	if proto == "tcp" {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.(*net.TCPConn).SetNoDelay(true)
		}
		return c, err
	}
	s, err := kcp.DialWithOptions(addr, nil, 0, 0)
	if err != nil {
		return nil, err
	}
	nd := 0
	if nodelay {
		nd = 1
	}
	ncv := 0
	if nc {
		ncv = 1
	}
	s.SetNoDelay(nd, interval, resend, ncv)
	s.SetWindowSize(wnd, wnd)
	s.SetMtu(mtu)
	s.SetACKNoDelay(nodelay)
	return s, nil
}

func main() {
	proto := flag.String("proto", "kcp", "kcp or tcp")
	addr := flag.String("addr", "127.0.0.1:3555", "gateway address")
	mode := flag.String("mode", "echo", "echo or bench")
	n := flag.Int("n", 10, "packets")
	size := flag.Int("size", 64, "bench: bytes of data per packet")
	window := flag.Int("window", 1, "bench: packets outstanding")
	prefix := flag.String("prefix", "m", "echo: data prefix")
	route := flag.Int("route", 1, "echo: route")
	hb := flag.Bool("hb", false, "echo: send a heartbeat first")
	pad := flag.Int("pad", 0, "echo: bytes appended to each packet's data")
	digest := flag.Bool("digest", false, "echo: print the length and SHA-256 of each reply")
	snmp := flag.Bool("snmp", false, "print kcp-go's counters at the end")
	nodelay := flag.Bool("nodelay", true, "kcp nodelay")
	interval := flag.Int("interval", 10, "kcp interval ms")
	resend := flag.Int("resend", 2, "kcp fast resend")
	nc := flag.Bool("nc", true, "kcp no congestion window")
	wnd := flag.Int("wnd", 128, "kcp windows")
	mtu := flag.Int("mtu", 1400, "kcp mtu")
	timeout := flag.Duration("timeout", 30*time.Second, "whole run")
	flag.Parse()

	c, err := dial(*proto, *addr, *nodelay, *interval, *resend, *nc, *wnd, *mtu)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(*timeout))
	r := bufio.NewReaderSize(c, 1<<16)
	if *mode == "echo" {
		echo(c, r, *n, *prefix, int16(*route), *hb, *pad, *digest)
	} else {
		bench(c, r, *n, *size, *window)
	}
	if *snmp {
		s := kcp.DefaultSnmp.Copy()
		out, _ := json.Marshal(map[string]uint64{
			"OutSegs": s.OutSegs, "InSegs": s.InSegs, "RetransSegs": s.RetransSegs,
			"FastRetransSegs": s.FastRetransSegs, "LostSegs": s.LostSegs,
			"RepeatSegs": s.RepeatSegs})
		fmt.Println("snmp", string(out))
	}
}

// echoData is packet i's data: the prefix and i, then pad bytes that differ
// from one packet to the next (so a reply with another packet's data, or
// with a fragment out of place, does not match).
func echoData(prefix string, i, pad int) []byte {
	b := []byte(fmt.Sprintf("%s%d", prefix, i))
	if pad > 0 {
		b = append(b, '/')
		for k := 0; k < pad-1; k++ {
			b = append(b, byte('a'+(i+k)%26))
		}
	}
	return b
}

func echo(c net.Conn, r *bufio.Reader, n int, prefix string, route int16, hb bool, pad int,
	digest bool) {
	if hb {
		if _, err := c.Write([]byte{0, 0, 0, 1, 0x80}); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		if p, err := readPacket(r); err != nil || !p.heartbeat {
			fmt.Println("error: no heartbeat answer", err)
			os.Exit(1)
		}
		fmt.Println("heartbeat")
	}
	for i := 0; i < n; i++ {
		if _, err := c.Write(packet(route, int16(i), echoData(prefix, i, pad))); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
	}
	for i := 0; i < n; i++ {
		p, err := readPacket(r)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		if p.heartbeat {
			i--
			continue
		}
		if digest {
			fmt.Printf("reply %d %d %d %x\n", p.route, p.seq, len(p.data), sha256.Sum256(p.data))
		} else {
			fmt.Printf("reply %d %d %s\n", p.route, p.seq, p.data)
		}
	}
	fmt.Println("done")
}

func bench(c net.Conn, r *bufio.Reader, n, size, window int) {
	data := make([]byte, size)
	for i := range data {
		data[i] = byte('a' + i%26)
	}
	sent := make([]time.Time, n)
	lat := make([]float64, 0, n)
	start := time.Now()
	next := 0
	for got := 0; got < n; {
		for next < n && next-got < window {
			sent[next] = time.Now()
			if _, err := c.Write(packet(1, int16(next), data)); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
			next++
		}
		p, err := readPacket(r)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		if p.heartbeat {
			continue
		}
		lat = append(lat, float64(time.Since(sent[got]).Microseconds())/1000.0)
		got++
	}
	el := time.Since(start).Seconds()
	sort.Float64s(lat)
	pct := func(q float64) float64 { return lat[int(q*float64(len(lat)-1))] }
	sum := 0.0
	for _, v := range lat {
		sum += v
	}
	out, _ := json.Marshal(map[string]interface{}{
		"n": n, "size": size, "window": window, "seconds": el,
		"per_sec": float64(n) / el, "mb_per_sec": float64(n*(size+9)) / el / 1e6,
		"avg_ms": sum / float64(len(lat)), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": lat[len(lat)-1],
	})
	fmt.Println(string(out))
}
